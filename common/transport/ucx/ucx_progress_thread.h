// The thread that drives a UcxTransport's worker: the only thread that calls UCX after setup
// (UCS_THREAD_MODE_SINGLE, so UCX takes no locks). Other threads post commands to it and wait for
// them (Run), so an endpoint is never closed under a concurrent send.
//
// While requests of ours are in flight (OpStarted/OpFinished) it polls, yielding the core between
// polls: some rendezvous steps raise no fd event. Otherwise, after `busy_poll` without activity, it
// sleeps on the worker's event fd, waking on network events, on ucp_worker_signal from Run or
// Stop, or at the latest every 50 ms.
//
// Thread safety: Run and Stop from any thread; OpStarted/OpFinished on the progress thread only
// (from commands and UCX callbacks).
#ifndef MOE_COMMON_TRANSPORT_UCX_UCX_PROGRESS_THREAD_H_
#define MOE_COMMON_TRANSPORT_UCX_UCX_PROGRESS_THREAD_H_

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <thread>

#include <ucp/api/ucp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace moe::transport::ucx {

class UcxProgressThread {
 public:
  // Prepares to drive `worker` (which must outlive this object); Start() starts the thread. After
  // every round of ucp_worker_progress the thread calls `after_progress` (work that must not run
  // inside a UCX callback, e.g. closing failed endpoints), which returns whether it did anything.
  // INTERNAL if the worker's event fd cannot be watched.
  static absl::StatusOr<std::unique_ptr<UcxProgressThread>> Create(ucp_worker_h worker,
                                                                   absl::Duration busy_poll,
                                                                   std::function<bool()> after_progress);
  // Stops the thread if Stop() was not called.
  ~UcxProgressThread();

  UcxProgressThread(const UcxProgressThread&) = delete;
  UcxProgressThread& operator=(const UcxProgressThread&) = delete;

  // Starts the thread. Call once.
  void Start();

  // Runs `fn` on the progress thread and waits for it; returns what `fn` returned. CANCELLED once
  // Stop() has begun. `fn` must not block for long: UCX calls are non-blocking and our own waits
  // on them are bounded.
  absl::Status Run(std::function<absl::Status()> fn);

  // Refuses new commands, runs those already posted, and joins the thread. Idempotent.
  void Stop();

  // Progress thread only: a request of ours was posted / completed.
  void OpStarted() { ++ops_in_flight_; }
  void OpFinished() { --ops_in_flight_; }

 private:
  UcxProgressThread(ucp_worker_h worker, absl::Duration busy_poll, std::function<bool()> after_progress)
      : worker_(worker), busy_poll_(busy_poll), after_progress_(std::move(after_progress)) {}

  void Loop();
  // Runs the commands posted so far; true if there were any.
  bool RunPostedCommands();

  const ucp_worker_h worker_;
  const absl::Duration busy_poll_;
  const std::function<bool()> after_progress_;
  int epoll_fd_ = -1;
  std::thread thread_;
  int ops_in_flight_ = 0;  // progress thread only

  absl::Mutex commands_mu_;
  std::deque<std::function<void()>> commands_ ABSL_GUARDED_BY(commands_mu_);
  bool stopped_ ABSL_GUARDED_BY(commands_mu_) = false;
  std::atomic<bool> has_commands_{false};
  std::atomic<bool> stop_{false};
};

}  // namespace moe::transport::ucx

#endif  // MOE_COMMON_TRANSPORT_UCX_UCX_PROGRESS_THREAD_H_
