#include "common/metrics/counter_mirror.h"

#include <atomic>
#include <memory>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"

namespace moe::metrics {
namespace {

// The value of family `name`'s series with label value `value`; -1 if absent.
double Value(prometheus::Registry& registry, const std::string& name, const std::string& value) {
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const prometheus::ClientMetric& metric : family.metric) {
      if (!metric.label.empty() && metric.label[0].value == value) return metric.counter.value;
    }
  }
  return -1;
}

TEST(CounterMirrorTest, ListsEverySeriesAndAddsTheSourcesGrowth) {
  prometheus::Registry registry;
  std::vector<uint64_t> totals = {0, 0};
  CounterMirror mirror(
      registry, "moe_test_dropped_total", "help", "reason", {"a", "b"}, [&] { return totals; },
      absl::ZeroDuration());
  EXPECT_EQ(Value(registry, "moe_test_dropped_total", "a"), 0);
  EXPECT_EQ(Value(registry, "moe_test_dropped_total", "b"), 0);
  totals = {3, 1};
  mirror.Update();
  totals = {5, 1};
  mirror.Update();
  mirror.Update();
  EXPECT_EQ(Value(registry, "moe_test_dropped_total", "a"), 5);
  EXPECT_EQ(Value(registry, "moe_test_dropped_total", "b"), 1);
}

TEST(CounterMirrorTest, ItsThreadFollowsTheSource) {
  prometheus::Registry registry;
  std::atomic<uint64_t> total{0};
  auto mirror = std::make_unique<CounterMirror>(
      registry, "moe_test_dropped_total", "help", "reason", std::vector<std::string>{"a"},
      [&] { return std::vector<uint64_t>{total.load()}; }, absl::Milliseconds(5));
  total = 42;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (Value(registry, "moe_test_dropped_total", "a") != 42 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(Value(registry, "moe_test_dropped_total", "a"), 42);
  mirror.reset();  // stops the thread promptly
}

}  // namespace
}  // namespace moe::metrics
