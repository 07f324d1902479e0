#include "services/expert_worker/expert_load_window.h"

#include <cmath>

#include "common/model/model_fingerprint.h"
#include "gtest/gtest.h"

namespace moe::services {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1000);

TEST(ExpertLoadWindowTest, EmptyLayerIsNaN) {
  ExpertLoadWindow window(2, 4, absl::Seconds(10));
  EXPECT_TRUE(std::isnan(window.BalanceRatio(0)));
  EXPECT_TRUE(std::isnan(window.BalanceRatio(5)));
}

TEST(ExpertLoadWindowTest, RatioIsMeanOverMax) {
  ExpertLoadWindow window(2, 4, absl::Seconds(10));
  window.Record(kT0, 1, 0, 8);
  window.Record(kT0, 1, 1, 4);
  window.Record(kT0, 1, 2, 4);
  // mean (16 / 4 = 4) / max 8.
  EXPECT_EQ(window.BalanceRatio(1), 0.5);
  EXPECT_TRUE(std::isnan(window.BalanceRatio(0)));
  for (int e = 0; e < 4; ++e) window.Record(kT0, 0, e, 3);
  EXPECT_EQ(window.BalanceRatio(0), 1.0);
}

TEST(ExpertLoadWindowTest, CountsLeaveAfterTheWindow) {
  ExpertLoadWindow window(1, 2, absl::Seconds(10), 10);
  window.Record(kT0, 0, 0, 10);
  window.Record(kT0 + absl::Seconds(5), 0, 1, 10);
  EXPECT_EQ(window.Total(0, 0), 10u);
  EXPECT_EQ(window.BalanceRatio(0), 1.0);
  EXPECT_TRUE(window.Advance(kT0 + absl::Seconds(10)));
  EXPECT_EQ(window.Total(0, 0), 0u);
  EXPECT_EQ(window.Total(0, 1), 10u);
  EXPECT_EQ(window.BalanceRatio(0), 0.5);
  window.Advance(kT0 + absl::Seconds(16));
  EXPECT_TRUE(std::isnan(window.BalanceRatio(0)));
}

TEST(ExpertLoadWindowTest, IgnoresOutOfRangeIndices) {
  ExpertLoadWindow window(1, 2, absl::Seconds(10));
  window.Record(kT0, 1, 0, 5);
  window.Record(kT0, 0, 2, 5);
  window.Record(kT0, -1, -1, 5);
  EXPECT_EQ(window.Total(0, 0), 0u);
  EXPECT_EQ(window.Total(0, 1), 0u);
}

TEST(ModelFingerprintTest, IsFnv1a64OfTheBytes) {
  // FNV-1a 64 reference values.
  EXPECT_EQ(model::FingerprintBytes(""), "fnv1a64:cbf29ce484222325");
  EXPECT_EQ(model::FingerprintBytes("a"), "fnv1a64:af63dc4c8601ec8c");
}

TEST(ModelFingerprintTest, MissingConfigIsNotFound) {
  EXPECT_EQ(model::ModelFingerprint("/nonexistent-moe-dir").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace moe::services
