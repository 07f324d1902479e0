#include "services/expert_worker/expert_load_window.h"

#include <algorithm>
#include <limits>

namespace moe::services {

ExpertLoadWindow::ExpertLoadWindow(int64_t num_layers, int64_t num_hosted_experts, absl::Duration window,
                                   int num_buckets)
    : num_layers_(std::max<int64_t>(num_layers, 0)),
      num_hosted_(std::max<int64_t>(num_hosted_experts, 0)),
      bucket_width_(std::max(window, absl::Milliseconds(1)) / std::max(num_buckets, 1)),
      buckets_(static_cast<size_t>(std::max(num_buckets, 1))),
      totals_(static_cast<size_t>(num_layers_ * num_hosted_), 0) {
  for (Bucket& bucket : buckets_) bucket.counts.assign(totals_.size(), 0);
}

int64_t ExpertLoadWindow::BucketIndex(absl::Time now) const {
  absl::Duration remainder;  // IDivDuration requires a non-null remainder
  return absl::IDivDuration(now - absl::UnixEpoch(), bucket_width_, &remainder);
}

bool ExpertLoadWindow::Advance(absl::Time now) {
  const int64_t current = BucketIndex(now);
  const int64_t size = static_cast<int64_t>(buckets_.size());
  bool dropped = false;
  for (Bucket& bucket : buckets_) {
    if (bucket.index < 0 || bucket.index > current - size) continue;
    for (size_t i = 0; i < totals_.size(); ++i) {
      totals_[i] -= bucket.counts[i];
      bucket.counts[i] = 0;
    }
    bucket.index = -1;
    dropped = true;
  }
  return dropped;
}

void ExpertLoadWindow::Record(absl::Time now, int64_t layer, int64_t local_expert, uint64_t rows) {
  if (layer < 0 || layer >= num_layers_ || local_expert < 0 || local_expert >= num_hosted_) return;
  Advance(now);
  const int64_t current = BucketIndex(now);
  Bucket& bucket = buckets_[static_cast<size_t>(current % static_cast<int64_t>(buckets_.size()))];
  if (bucket.index != current) {
    // The slot held a bucket still inside the window only if the clock went backwards; fold it out.
    for (size_t i = 0; i < totals_.size(); ++i) {
      totals_[i] -= bucket.counts[i];
      bucket.counts[i] = 0;
    }
    bucket.index = current;
  }
  const size_t i = static_cast<size_t>(layer * num_hosted_ + local_expert);
  bucket.counts[i] += rows;
  totals_[i] += rows;
}

double ExpertLoadWindow::BalanceRatio(int64_t layer) const {
  if (layer < 0 || layer >= num_layers_ || num_hosted_ == 0) {
    return std::numeric_limits<double>::quiet_NaN();
  }
  uint64_t sum = 0, max = 0;
  for (int64_t e = 0; e < num_hosted_; ++e) {
    const uint64_t count = totals_[static_cast<size_t>(layer * num_hosted_ + e)];
    sum += count;
    max = std::max(max, count);
  }
  if (max == 0) return std::numeric_limits<double>::quiet_NaN();
  return (static_cast<double>(sum) / static_cast<double>(num_hosted_)) / static_cast<double>(max);
}

uint64_t ExpertLoadWindow::Total(int64_t layer, int64_t local_expert) const {
  if (layer < 0 || layer >= num_layers_ || local_expert < 0 || local_expert >= num_hosted_) return 0;
  return totals_[static_cast<size_t>(layer * num_hosted_ + local_expert)];
}

}  // namespace moe::services
