#include "common/transport/ucx/ucx_progress_thread.h"

#include <sched.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
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
  {
    // Waits for a command running on another thread; later ones are refused.
    absl::MutexLock lock(&ucx_mu_);
    stopped_ = true;
  }
  if (!thread_.joinable()) return;
  stop_.store(true);
  ucp_worker_signal(worker_);
  {
    absl::MutexLock lock(&spin_mu_);  // wakes it if parked for a spinner
  }
  thread_.join();
}

absl::Status UcxProgressThread::Run(const std::function<absl::Status()>& fn) {
  absl::MutexLock lock(&ucx_mu_);
  if (stopped_) return absl::CancelledError("transport shut down");
  absl::Status result = fn();
  ProgressLocked();
  WakeIfInFlightLocked();
  return result;
}

bool UcxProgressThread::ProgressLocked() {
  bool active = false;
  while (ucp_worker_progress(worker_) != 0) active = true;
  if (after_progress_()) active = true;
  return active;
}

void UcxProgressThread::WakeIfInFlightLocked() {
  if (ops_in_flight_.load(std::memory_order_relaxed) > 0) ucp_worker_signal(worker_);
}

void UcxProgressThread::BeginSpin() {
  absl::MutexLock lock(&spin_mu_);
  ++spinners_;
}

void UcxProgressThread::EndSpin() {
  absl::MutexLock lock(&spin_mu_);
  --spinners_;
}

bool UcxProgressThread::Poll() {
  if (!ucx_mu_.TryLock()) return false;
  bool active = false;
  if (!stopped_) {
    active = ProgressLocked();
    WakeIfInFlightLocked();
  }
  ucx_mu_.Unlock();
  return active;
}

void UcxProgressThread::WaitForActivity(absl::Time until) {
  ucs_status_t armed = UCS_ERR_BUSY;
  {
    absl::MutexLock lock(&ucx_mu_);
    if (stopped_) return;
    if (ops_in_flight_.load(std::memory_order_relaxed) == 0) armed = ucp_worker_arm(worker_);
  }
  if (armed == UCS_ERR_BUSY) {  // events pending, or requests of ours to poll for
    sched_yield();
    return;
  }
  const int64_t ms = std::clamp<int64_t>(absl::ToInt64Milliseconds(until - absl::Now()) + 1, 1, kMaxSleepMs);
  epoll_event event;
  epoll_wait(epoll_fd_, &event, 1, armed == UCS_OK ? static_cast<int>(ms) : 1);
}

void UcxProgressThread::Loop() {
  absl::Time last_activity = absl::Now();
  for (;;) {
    if (stop_.load()) return;
    ucx_mu_.Lock();
    const bool active = ProgressLocked();
    const absl::Time now = absl::Now();
    if (active) {
      ucx_mu_.Unlock();
      last_activity = now;
      continue;
    }
    if (ops_in_flight_.load(std::memory_order_relaxed) > 0) {
      // Some protocol steps (rendezvous fragments over shared memory) raise no event on the
      // worker's fd, so while our own operations are in flight we poll, yielding the core.
      ucx_mu_.Unlock();
      sched_yield();
      continue;
    }
    if (now - last_activity < busy_poll_) {
      ucx_mu_.Unlock();
      continue;
    }
    ucx_mu_.Unlock();
    {
      // A receiver spins and progresses the worker itself: stay parked, unarmed (so the sender
      // does not signal the fd for what the spinner takes), until it stops, at most one sleep.
      absl::MutexLock lock(&spin_mu_);
      if (spinners_ > 0) {
        spin_mu_.AwaitWithTimeout(
            absl::Condition(
                +[](UcxProgressThread* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->spin_mu_) {
                  return self->spinners_ == 0 || self->stop_.load();
                },
                this),
            absl::Milliseconds(kMaxSleepMs));
        continue;
      }
    }
    ucx_mu_.Lock();
    const ucs_status_t armed = ucp_worker_arm(worker_);
    ucx_mu_.Unlock();
    if (armed == UCS_ERR_BUSY) continue;  // events arrived meanwhile
    if (stop_.load()) continue;
    // Asleep without UCX held: callers may drive it meanwhile (Run, Poll); a request they leave in
    // flight signals the worker (WakeIfInFlightLocked), so polling resumes.
    epoll_event event;
    epoll_wait(epoll_fd_, &event, 1, armed == UCS_OK ? kMaxSleepMs : 1);
  }
}

}  // namespace moe::transport::ucx
