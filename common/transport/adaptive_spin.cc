#include "common/transport/adaptive_spin.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace moe::transport {

absl::Status AdaptiveSpinConfig::Validate() const {
  auto bad = [](const char* field, const auto& why) {
    return absl::InvalidArgumentError(absl::StrCat("AdaptiveSpinConfig.", field, " ", why));
  };
  if (min_spin <= absl::ZeroDuration()) return bad("min_spin", "must be positive");
  if (max_spin < min_spin) return bad("max_spin", "must be at least min_spin");
  if (spin_below <= absl::ZeroDuration()) return bad("spin_below", "must be positive");
  if (multiplier < 1) return bad("multiplier", "must be at least 1");
  if (history_weight < 1) return bad("history_weight", "must be at least 1");
  if (failures_before_pause < 1) return bad("failures_before_pause", "must be at least 1");
  if (first_pause < 1) return bad("first_pause", "must be at least 1");
  if (max_pause < first_pause) return bad("max_pause", "must be at least first_pause");
  return absl::OkStatus();
}

AdaptiveSpin::AdaptiveSpin(const AdaptiveSpinConfig& config)
    : config_(config),
      estimate_ns_(absl::ToInt64Nanoseconds(config.max_spin) / config.multiplier),
      next_pause_(config.first_pause) {}

absl::Duration AdaptiveSpin::NextSpin() const {
  if (pause_left_ > 0) return absl::ZeroDuration();
  const absl::Duration estimate = absl::Nanoseconds(estimate_ns_);
  if (estimate >= config_.spin_below) return absl::ZeroDuration();
  return std::clamp(estimate * config_.multiplier, config_.min_spin, config_.max_spin);
}

void AdaptiveSpin::Record(absl::Duration spun, absl::Duration waited, bool caught) {
  // The moving average, in integer nanoseconds so that the same history gives the same estimate.
  const int64_t sample = std::clamp<int64_t>(absl::ToInt64Nanoseconds(waited), 0,
                                             4 * absl::ToInt64Nanoseconds(config_.spin_below));
  estimate_ns_ += (sample - estimate_ns_) / config_.history_weight;

  if (spun <= absl::ZeroDuration()) {
    if (pause_left_ > 0) --pause_left_;
    return;
  }
  if (caught) {
    failures_ = 0;
    next_pause_ = config_.first_pause;
    return;
  }
  if (++failures_ < config_.failures_before_pause) return;
  pause_left_ = next_pause_;
  next_pause_ = std::min(2 * next_pause_, config_.max_pause);
  // After the pause one spin probes: if it misses too, the next (longer) pause starts at once.
  failures_ = config_.failures_before_pause - 1;
}

}  // namespace moe::transport
