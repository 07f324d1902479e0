// Sliding-window token counts per (layer, hosted expert), for moe_expert_load_balance_ratio{layer}:
// mean / max tokens per hosted expert over the last `window` (deploy/METRICS.md).
//
// The window is kept as `num_buckets` time buckets plus running totals, so recording a round and
// reading a layer's ratio cost O(hosted experts), not O(window).
//
// Thread safety: not thread-safe (the round loop owns it).
#ifndef MOE_SERVICES_EXPERT_WORKER_EXPERT_LOAD_WINDOW_H_
#define MOE_SERVICES_EXPERT_WORKER_EXPERT_LOAD_WINDOW_H_

#include <cstdint>
#include <vector>

#include "absl/time/time.h"

namespace moe::services {

class ExpertLoadWindow {
 public:
  // `window` > 0 split into `num_buckets` >= 1 buckets.
  ExpertLoadWindow(int64_t num_layers, int64_t num_hosted_experts, absl::Duration window,
                   int num_buckets = 10);

  // Adds `rows` token rows for hosted expert `local_expert` of `layer` at time `now`. Out-of-range
  // indices are ignored (the caller validated the message; this must never write out of bounds).
  void Record(absl::Time now, int64_t layer, int64_t local_expert, uint64_t rows);
  // Drops buckets older than the window as of `now`. Returns true if any counts were dropped.
  bool Advance(absl::Time now);
  // mean / max of the window's per-expert totals of `layer`; NaN when the layer saw no tokens.
  double BalanceRatio(int64_t layer) const;
  // The window's total rows of (layer, local_expert).
  uint64_t Total(int64_t layer, int64_t local_expert) const;

  int64_t num_layers() const { return num_layers_; }

 private:
  struct Bucket {
    int64_t index = -1;            // bucket number since the epoch; -1 = empty
    std::vector<uint64_t> counts;  // [layer * num_hosted + expert]
  };
  int64_t BucketIndex(absl::Time now) const;

  int64_t num_layers_;
  int64_t num_hosted_;
  absl::Duration bucket_width_;
  std::vector<Bucket> buckets_;  // ring, by index % size
  std::vector<uint64_t> totals_;
};

}  // namespace moe::services

#endif  // MOE_SERVICES_EXPERT_WORKER_EXPERT_LOAD_WINDOW_H_
