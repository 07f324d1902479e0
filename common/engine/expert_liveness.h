// Which expert workers a MoeDispatcher may send to, and where it reports one that failed a round.
// In a cluster the attention worker's ExpertConnector keeps it: a worker is live while it is
// connected and validated, stops being live when a round gives up on it (ReportFailed: no answer
// before the deadline, or its connection broke) and is live again once the connector has
// reconnected it. Embedded mode has none: every shard is always live.
//
// Thread safety: every method may be called from any thread.
#ifndef MOE_COMMON_ENGINE_EXPERT_LIVENESS_H_
#define MOE_COMMON_ENGINE_EXPERT_LIVENESS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace moe::engine {

class ExpertLiveness {
 public:
  // `num_workers` workers, none live yet.
  explicit ExpertLiveness(int64_t num_workers)
      : num_workers_(num_workers), live_(new std::atomic<bool>[static_cast<size_t>(num_workers)]) {
    for (int64_t w = 0; w < num_workers; ++w) live_[w].store(false);
  }

  int64_t num_workers() const { return num_workers_; }
  bool live(int64_t worker) const { return live_[worker].load(std::memory_order_acquire); }
  void Set(int64_t worker, bool live) { live_[worker].store(live, std::memory_order_release); }

  // Called (outside any dispatcher lock) on every ReportFailed; set before the dispatcher runs.
  void SetFailureListener(std::function<void(int64_t worker, const absl::Status& why)> listener) {
    absl::MutexLock lock(&mu_);
    listener_ = std::move(listener);
  }

  // A round gave up on `worker`: it is not live until reconnected; the listener hears why.
  void ReportFailed(int64_t worker, const absl::Status& why) {
    Set(worker, false);
    std::function<void(int64_t, const absl::Status&)> listener;
    {
      absl::MutexLock lock(&mu_);
      listener = listener_;
    }
    if (listener) listener(worker, why);
  }

 private:
  const int64_t num_workers_;
  std::unique_ptr<std::atomic<bool>[]> live_;
  absl::Mutex mu_;
  std::function<void(int64_t, const absl::Status&)> listener_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_EXPERT_LIVENESS_H_
