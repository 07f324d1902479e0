#include "common/transport/ucx/ucx_progress_thread.h"

#include <sched.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "common/transport/ucx/ucx_status.h"

namespace moe::transport::ucx {
namespace {

// How long the thread sleeps at most on the event fd (a safety net for a transport whose events
// are not signalled; normally a network event or ucp_worker_signal wakes it first).
constexpr int kMaxSleepMs = 50;

}  // namespace

absl::StatusOr<std::unique_ptr<UcxProgressThread>> UcxProgressThread::Create(
    ucp_worker_h worker, absl::Duration busy_poll, std::function<bool()> after_progress) {
  std::unique_ptr<UcxProgressThread> self(
      new UcxProgressThread(worker, busy_poll, std::move(after_progress)));
  int event_fd = -1;
  RETURN_IF_ERROR(UcsStatusToStatus(ucp_worker_get_efd(worker, &event_fd), "ucp_worker_get_efd"));
  self->epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (self->epoll_fd_ < 0) return absl::InternalError(absl::StrCat("epoll_create1: ", strerror(errno)));
  epoll_event event{};
  event.events = EPOLLIN;
  if (epoll_ctl(self->epoll_fd_, EPOLL_CTL_ADD, event_fd, &event) != 0) {
    return absl::InternalError(absl::StrCat("epoll_ctl: ", strerror(errno)));
  }
  return self;
}

void UcxProgressThread::Start() {
  thread_ = std::thread([this] { Loop(); });
}

UcxProgressThread::~UcxProgressThread() {
  Stop();
  if (epoll_fd_ >= 0) close(epoll_fd_);
}

void UcxProgressThread::Stop() {
  if (!thread_.joinable()) return;
  {
    absl::MutexLock lock(&commands_mu_);
    stopped_ = true;
  }
  stop_.store(true);
  ucp_worker_signal(worker_);
  thread_.join();
}

absl::Status UcxProgressThread::Run(std::function<absl::Status()> fn) {
  absl::Mutex done_mu;
  bool done = false;
  absl::Status result;
  {
    absl::MutexLock lock(&commands_mu_);
    if (stopped_) return absl::CancelledError("transport shut down");
    commands_.push_back([&] {
      absl::Status s = fn();
      absl::MutexLock done_lock(&done_mu);
      result = std::move(s);
      done = true;
    });
    has_commands_.store(true, std::memory_order_release);
  }
  ucp_worker_signal(worker_);
  // Unbounded on purpose: the thread runs every posted command (also while stopping) and each
  // command is bounded, so this returns; returning earlier would leave `fn` dangling.
  absl::MutexLock lock(&done_mu);
  done_mu.Await(absl::Condition(&done));
  return result;
}

bool UcxProgressThread::RunPostedCommands() {
  if (!has_commands_.load(std::memory_order_acquire)) return false;
  std::deque<std::function<void()>> commands;
  {
    absl::MutexLock lock(&commands_mu_);
    commands.swap(commands_);
    has_commands_.store(false, std::memory_order_relaxed);
  }
  for (auto& command : commands) command();
  return !commands.empty();
}

void UcxProgressThread::Loop() {
  absl::Time last_activity = absl::Now();
  for (;;) {
    bool active = RunPostedCommands();
    if (stop_.load()) {
      // New commands are refused now (stopped_); run the last ones.
      RunPostedCommands();
      return;
    }
    while (ucp_worker_progress(worker_) != 0) active = true;
    if (after_progress_()) active = true;
    const absl::Time now = absl::Now();
    if (active) {
      last_activity = now;
      continue;
    }
    if (ops_in_flight_ > 0) {
      // Some protocol steps (rendezvous fragments over shared memory) raise no event on the
      // worker's fd, so while our own operations are in flight we poll, yielding the core.
      sched_yield();
      continue;
    }
    if (now - last_activity < busy_poll_) continue;
    const ucs_status_t armed = ucp_worker_arm(worker_);
    if (armed == UCS_ERR_BUSY) continue;  // events arrived meanwhile
    // A command posted before arming may have had its signal drained by the arm.
    if (has_commands_.load(std::memory_order_acquire) || stop_.load()) continue;
    epoll_event event;
    epoll_wait(epoll_fd_, &event, 1, armed == UCS_OK ? kMaxSleepMs : 1);
  }
}

}  // namespace moe::transport::ucx
