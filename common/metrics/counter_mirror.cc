#include "common/metrics/counter_mirror.h"

#include <utility>

#include "prometheus/family.h"

namespace moe::metrics {

CounterMirror::CounterMirror(prometheus::Registry& registry, const std::string& name, const std::string& help,
                             const std::string& label, const std::vector<std::string>& values,
                             std::function<std::vector<uint64_t>()> source, absl::Duration period)
    : source_(std::move(source)), last_(values.size(), 0) {
  auto& family = prometheus::BuildCounter().Name(name).Help(help).Register(registry);
  for (const std::string& value : values) series_.push_back(&family.Add({{label, value}}));
  if (period > absl::ZeroDuration()) {
    thread_ = std::thread([this, period] {
      for (;;) {
        {
          absl::MutexLock lock(&mu_);
          if (mu_.AwaitWithTimeout(absl::Condition(&stop_), period)) return;
        }
        Update();
      }
    });
  }
}

CounterMirror::~CounterMirror() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void CounterMirror::Update() {
  const std::vector<uint64_t> totals = source_();
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < series_.size() && i < totals.size(); ++i) {
    if (totals[i] > last_[i]) {
      series_[i]->Increment(static_cast<double>(totals[i] - last_[i]));
      last_[i] = totals[i];
    }
  }
}

}  // namespace moe::metrics
