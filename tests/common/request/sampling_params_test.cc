#include "common/request/sampling_params.h"

#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe::request {
namespace {

using ::testing::HasSubstr;

TEST(ResolveSamplingParamsTest, TakesGenerationConfigDefaultsWhenSampling) {
  model::GenerationConfig config;
  config.do_sample = true;
  config.temperature = 0.6;
  config.top_k = 20;
  config.top_p = 0.95;
  absl::StatusOr<SamplingParams> p = ResolveSamplingParams({}, config);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->temperature, 0.6);
  EXPECT_EQ(p->top_k, 20);
  EXPECT_EQ(p->top_p, 0.95);
  EXPECT_EQ(p->min_p, 0.0);
  EXPECT_EQ(p->repetition_penalty, 1.0);
  EXPECT_EQ(p->seed, 0u);
  EXPECT_FALSE(p->greedy());
}

TEST(ResolveSamplingParamsTest, DoSampleFalseDefaultsToGreedy) {
  model::GenerationConfig config;  // do_sample false, temperature 1.0, top_k 50
  config.temperature = 0.7;
  absl::StatusOr<SamplingParams> p = ResolveSamplingParams({}, config);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->temperature, 0.0);
  EXPECT_TRUE(p->greedy());
  EXPECT_EQ(p->top_k, 50);
}

TEST(ResolveSamplingParamsTest, OverridesWin) {
  model::GenerationConfig config;
  config.min_p = 0.2;
  SamplingOverrides o;
  o.temperature = 0.9;
  o.top_k = -1;
  o.top_p = 0.5;
  o.min_p = 0.05;
  o.repetition_penalty = 1.3;
  o.seed = 77;
  absl::StatusOr<SamplingParams> p = ResolveSamplingParams(o, config);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->temperature, 0.9);
  EXPECT_EQ(p->top_k, -1);
  EXPECT_EQ(p->top_p, 0.5);
  EXPECT_EQ(p->min_p, 0.05);
  EXPECT_EQ(p->repetition_penalty, 1.3);
  EXPECT_EQ(p->seed, 77u);
}

TEST(ResolveSamplingParamsTest, MinPComesFromGenerationConfigWhenSet) {
  model::GenerationConfig config;
  config.min_p = 0.2;
  absl::StatusOr<SamplingParams> p = ResolveSamplingParams({}, config);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->min_p, 0.2);
}

TEST(ResolveSamplingParamsTest, RejectsNegativeTemperatureNamingTheField) {
  SamplingOverrides o;
  o.temperature = -1.0;
  absl::StatusOr<SamplingParams> p = ResolveSamplingParams(o, {});
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(p.status().message(), "temperature must be a finite number >= 0, got -1");
}

struct BadParamCase {
  std::string field;
  SamplingOverrides overrides;
};

TEST(ResolveSamplingParamsTest, RejectsEveryInvalidFieldNamingIt) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<BadParamCase> cases;
  auto add = [&](std::string field, auto setter) {
    SamplingOverrides o;
    setter(o);
    cases.push_back({std::move(field), o});
  };
  add("temperature", [&](SamplingOverrides& o) { o.temperature = nan; });
  add("temperature", [&](SamplingOverrides& o) { o.temperature = inf; });
  add("top_k", [&](SamplingOverrides& o) { o.top_k = -2; });
  add("top_p", [&](SamplingOverrides& o) { o.top_p = 0.0; });
  add("top_p", [&](SamplingOverrides& o) { o.top_p = 1.5; });
  add("top_p", [&](SamplingOverrides& o) { o.top_p = nan; });
  add("min_p", [&](SamplingOverrides& o) { o.min_p = -0.1; });
  add("min_p", [&](SamplingOverrides& o) { o.min_p = 1.01; });
  add("min_p", [&](SamplingOverrides& o) { o.min_p = nan; });
  add("repetition_penalty", [&](SamplingOverrides& o) { o.repetition_penalty = 0.0; });
  add("repetition_penalty", [&](SamplingOverrides& o) { o.repetition_penalty = -1.0; });
  add("repetition_penalty", [&](SamplingOverrides& o) { o.repetition_penalty = nan; });
  add("repetition_penalty", [&](SamplingOverrides& o) { o.repetition_penalty = inf; });
  add("presence_penalty", [&](SamplingOverrides& o) { o.presence_penalty = 2.01; });
  add("presence_penalty", [&](SamplingOverrides& o) { o.presence_penalty = -2.5; });
  add("presence_penalty", [&](SamplingOverrides& o) { o.presence_penalty = nan; });
  add("presence_penalty", [&](SamplingOverrides& o) { o.presence_penalty = -inf; });
  add("frequency_penalty", [&](SamplingOverrides& o) { o.frequency_penalty = -2.01; });
  add("frequency_penalty", [&](SamplingOverrides& o) { o.frequency_penalty = 3.0; });
  add("frequency_penalty", [&](SamplingOverrides& o) { o.frequency_penalty = nan; });
  add("frequency_penalty", [&](SamplingOverrides& o) { o.frequency_penalty = inf; });
  for (const BadParamCase& c : cases) {
    absl::StatusOr<SamplingParams> p = ResolveSamplingParams(c.overrides, {});
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(p.status().message(), HasSubstr(c.field + " must be")) << p.status();
  }
}

TEST(ResolveSamplingParamsTest, InvalidGenerationConfigDefaultIsRejected) {
  model::GenerationConfig config;
  config.top_p = 0.0;
  absl::StatusOr<SamplingParams> p = ResolveSamplingParams({}, config);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(p.status().message(), HasSubstr("top_p must be in (0, 1], got 0"));
}

TEST(ResolveSamplingParamsTest, AcceptsBoundaryValues) {
  SamplingOverrides o;
  o.temperature = 0.0;
  o.top_k = 0;
  o.top_p = 1.0;
  o.min_p = 1.0;
  o.repetition_penalty = 1e-3;
  o.presence_penalty = -2.0;
  o.frequency_penalty = 2.0;
  EXPECT_TRUE(ResolveSamplingParams(o, {}).ok());
  o.presence_penalty = 2.0;
  o.frequency_penalty = -2.0;
  EXPECT_TRUE(ResolveSamplingParams(o, {}).ok());
}

TEST(ResolveSamplingParamsTest, PresenceAndFrequencyPenaltiesDefaultToZeroAndPassThrough) {
  absl::StatusOr<SamplingParams> p = ResolveSamplingParams({}, {});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->presence_penalty, 0.0);
  EXPECT_EQ(p->frequency_penalty, 0.0);
  SamplingOverrides o;
  o.presence_penalty = 0.5;
  o.frequency_penalty = -1.25;
  p = ResolveSamplingParams(o, {});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->presence_penalty, 0.5);
  EXPECT_EQ(p->frequency_penalty, -1.25);
}

}  // namespace
}  // namespace moe::request
