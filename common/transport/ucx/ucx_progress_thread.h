// The thread that drives a UcxTransport's worker. UCX is called by one thread at a time, under this
// object's UCX lock (UCS_THREAD_MODE_SERIALIZED, so UCX takes no locks of its own): the progress
// thread, or a caller (below). An endpoint is thus never closed under a concurrent send.
//
// The progress thread: while requests of ours are in flight (OpStarted/OpFinished) it polls,
// yielding the core between polls: some rendezvous steps raise no fd event. Otherwise, after
// `busy_poll` without activity, it sleeps on the worker's event fd, waking on network events, on
// ucp_worker_signal, or at the latest every 50 ms.
//
// Fast path (docs/data-plane.md#ucx-transport): callers do not hand their work to the progress
// thread and wait for a wake-up. Run executes the command on the calling thread under the UCX
// lock (waiting only while another thread is inside UCX, never for the progress thread to wake
// up). A thread that waits for a message may spin (it is a transport::InboxPoller): between
// BeginSpin and EndSpin it progresses the worker itself (Poll), so the message is delivered on the
// waiting thread, and meanwhile the progress thread does not arm the worker's fd and stays parked,
// so neither the sender signals the fd nor does a second thread wake up for the same message.
//
// Thread safety: Run, the InboxPoller methods and Stop from any thread; OpStarted/OpFinished only
// with UCX held (from commands and UCX callbacks).
#ifndef MOE_COMMON_TRANSPORT_UCX_UCX_PROGRESS_THREAD_H_
#define MOE_COMMON_TRANSPORT_UCX_UCX_PROGRESS_THREAD_H_

#include <atomic>
#include <functional>
#include <memory>
#include <thread>

#include <ucp/api/ucp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/transport/tagged_inbox.h"

namespace moe::transport::ucx {

class UcxProgressThread final : public InboxPoller {
 public:
  // Prepares to drive `worker` (which must outlive this object); Start() starts the thread. After
  // every round of ucp_worker_progress the driving thread calls `after_progress` (work that must
  // not run inside a UCX callback, e.g. closing failed endpoints), which returns whether it did
  // anything. INTERNAL if the worker's event fd cannot be watched.
  static absl::StatusOr<std::unique_ptr<UcxProgressThread>> Create(ucp_worker_h worker,
                                                                   absl::Duration busy_poll,
                                                                   std::function<bool()> after_progress);
  // Stops the thread if Stop() was not called.
  ~UcxProgressThread() override;

  UcxProgressThread(const UcxProgressThread&) = delete;
  UcxProgressThread& operator=(const UcxProgressThread&) = delete;

  // Starts the thread. Call once.
  void Start();

  // Runs `fn` with UCX held, on the calling thread, then progresses the worker; returns what `fn`
  // returned. CANCELLED once Stop() has begun. `fn` must not block for long: UCX calls are
  // non-blocking and our own waits on them are bounded.
  absl::Status Run(const std::function<absl::Status()>& fn);

  // Refuses new commands, waits for those running, and joins the thread. Idempotent.
  void Stop();

  // InboxPoller: a receiver spins. Poll progresses the worker on the calling thread if no other
  // thread is inside UCX (never blocks) and returns whether that did anything.
  void BeginSpin() override;
  bool Poll() override;
  void EndSpin() override;
  // Sleeps on the worker's event fd (armed) until an event, ucp_worker_signal or `until` (at most
  // 50 ms); returns at once when UCX has work (requests in flight: it yields the core instead).
  void WaitForActivity(absl::Time until) override;
  // Wakes every thread sleeping on the worker's event fd (e.g. on Shutdown).
  void Wake() { ucp_worker_signal(worker_); }

  // With UCX held: a request of ours was posted / completed.
  void OpStarted() { ops_in_flight_.fetch_add(1, std::memory_order_relaxed); }
  void OpFinished() { ops_in_flight_.fetch_sub(1, std::memory_order_relaxed); }

 private:
  UcxProgressThread(ucp_worker_h worker, absl::Duration busy_poll, std::function<bool()> after_progress)
      : worker_(worker), busy_poll_(busy_poll), after_progress_(std::move(after_progress)) {}

  void Loop();
  // ucp_worker_progress until idle, then after_progress_; true if either did anything.
  bool ProgressLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(ucx_mu_);
  // After UCX was driven on another thread: wakes the progress thread if requests of ours are in
  // flight (it polls for them; it may be asleep on the fd).
  void WakeIfInFlightLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(ucx_mu_);

  const ucp_worker_h worker_;
  const absl::Duration busy_poll_;
  const std::function<bool()> after_progress_;
  int epoll_fd_ = -1;
  std::thread thread_;

  // Held by whichever thread calls UCX: the progress thread or a caller (Run, Poll).
  absl::Mutex ucx_mu_;
  bool stopped_ ABSL_GUARDED_BY(ucx_mu_) = false;
  std::atomic<bool> stop_{false};
  std::atomic<int> ops_in_flight_{0};  // changed with ucx_mu_ held, read anywhere

  // Receivers spinning now (BeginSpin..EndSpin); the progress thread parks while there are any.
  absl::Mutex spin_mu_;
  int spinners_ ABSL_GUARDED_BY(spin_mu_) = 0;
};

}  // namespace moe::transport::ucx

#endif  // MOE_COMMON_TRANSPORT_UCX_UCX_PROGRESS_THREAD_H_
