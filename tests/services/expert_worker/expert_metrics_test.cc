#include "services/expert_worker/expert_metrics.h"

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "prometheus/registry.h"

namespace moe::services {
namespace {

// Layers 0 and 2 are MoE layers of 3; the worker hosts experts [4, 6).
constexpr int64_t kNumLayers = 3;
constexpr int64_t kFirstExpert = 4;
constexpr int64_t kNumHosted = 2;

// The value of the counter or gauge `name` with exactly `labels`, or NaN if there is none.
double Value(prometheus::Registry& registry, const std::string& name,
             const std::map<std::string, std::string>& labels = {}) {
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const prometheus::ClientMetric& metric : family.metric) {
      std::map<std::string, std::string> have;
      for (const auto& label : metric.label) have[label.name] = label.value;
      if (have != labels) continue;
      return family.type == prometheus::MetricType::Counter ? metric.counter.value : metric.gauge.value;
    }
  }
  return std::nan("");
}

uint64_t ComputeSamples(prometheus::Registry& registry) {
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    if (family.name == "moe_expert_compute_duration_seconds")
      return family.metric.at(0).histogram.sample_count;
  }
  return 0;
}

TEST(ExpertMetricsTest, ServedRoundCountsRowsPerLayerAndPerHostedExpert) {
  prometheus::Registry registry;
  ExpertMetrics metrics(registry, {0, 2}, kNumLayers, kFirstExpert, kNumHosted, true, absl::Seconds(10));
  const std::vector<uint64_t> rows = {2, 3};
  metrics.OnRoundServed({.layer = 2,
                         .rows_per_expert = rows,
                         .start = absl::Now(),
                         .compute = absl::Milliseconds(1),
                         .bytes_received = 100,
                         .bytes_sent = 90});

  EXPECT_EQ(Value(registry, "moe_expert_hosted_experts"), 2.0);
  EXPECT_EQ(Value(registry, "moe_expert_rounds_total"), 1.0);
  EXPECT_EQ(Value(registry, "moe_expert_bytes_received_total"), 100.0);
  EXPECT_EQ(Value(registry, "moe_expert_bytes_sent_total"), 90.0);
  EXPECT_EQ(ComputeSamples(registry), 1u);
  EXPECT_EQ(Value(registry, "moe_expert_tokens_total", {{"layer", "2"}}), 5.0);
  EXPECT_EQ(Value(registry, "moe_expert_tokens_total", {{"layer", "0"}}), 0.0);
  EXPECT_EQ(Value(registry, "moe_expert_expert_tokens_total", {{"layer", "2"}, {"expert", "4"}}), 2.0);
  EXPECT_EQ(Value(registry, "moe_expert_expert_tokens_total", {{"layer", "2"}, {"expert", "5"}}), 3.0);
  // mean 2.5 / max 3 over the window.
  EXPECT_DOUBLE_EQ(Value(registry, "moe_expert_load_balance_ratio", {{"layer", "2"}}), 2.5 / 3.0);
  EXPECT_TRUE(std::isnan(Value(registry, "moe_expert_load_balance_ratio", {{"layer", "0"}})));
}

TEST(ExpertMetricsTest, FailedRoundCountsARoundAndItsBytesButNoTokens) {
  prometheus::Registry registry;
  ExpertMetrics metrics(registry, {0, 2}, kNumLayers, kFirstExpert, kNumHosted, false, absl::Seconds(10));
  metrics.OnRoundFailed({.layer = 0,
                         .status = absl::InvalidArgumentError("expert 9 is not hosted here"),
                         .compute = absl::Microseconds(5),
                         .bytes_received = 40});

  EXPECT_EQ(Value(registry, "moe_expert_rounds_total"), 1.0);
  EXPECT_EQ(Value(registry, "moe_expert_bytes_received_total"), 40.0);
  EXPECT_EQ(Value(registry, "moe_expert_bytes_sent_total"), 0.0);
  EXPECT_EQ(Value(registry, "moe_expert_tokens_total", {{"layer", "0"}}), 0.0);
}

TEST(ExpertMetricsTest, IdleAfterTheWindowResetsTheBalanceToNaN) {
  prometheus::Registry registry;
  ExpertMetrics metrics(registry, {0, 2}, kNumLayers, kFirstExpert, kNumHosted, false, absl::Seconds(10));
  const absl::Time start = absl::FromUnixSeconds(1000);
  const std::vector<uint64_t> rows = {4, 4};
  metrics.OnRoundServed({.layer = 0, .rows_per_expert = rows, .start = start});
  EXPECT_EQ(Value(registry, "moe_expert_load_balance_ratio", {{"layer", "0"}}), 1.0);

  metrics.OnIdle(start + absl::Seconds(5));
  EXPECT_EQ(Value(registry, "moe_expert_load_balance_ratio", {{"layer", "0"}}), 1.0);
  metrics.OnIdle(start + absl::Seconds(11));
  EXPECT_TRUE(std::isnan(Value(registry, "moe_expert_load_balance_ratio", {{"layer", "0"}})));
}

TEST(ExpertMetricsTest, RowsOfADenseOrUnknownLayerAreNotCounted) {
  prometheus::Registry registry;
  ExpertMetrics metrics(registry, {0, 2}, kNumLayers, kFirstExpert, kNumHosted, true, absl::Seconds(10));
  const std::vector<uint64_t> rows = {1, 1};
  metrics.OnRoundServed({.layer = 1, .rows_per_expert = rows, .start = absl::Now()});
  metrics.OnRoundServed({.layer = 7, .rows_per_expert = rows, .start = absl::Now()});

  EXPECT_EQ(Value(registry, "moe_expert_rounds_total"), 2.0);
  EXPECT_EQ(Value(registry, "moe_expert_tokens_total", {{"layer", "0"}}), 0.0);
  EXPECT_EQ(Value(registry, "moe_expert_tokens_total", {{"layer", "2"}}), 0.0);
}

}  // namespace
}  // namespace moe::services
