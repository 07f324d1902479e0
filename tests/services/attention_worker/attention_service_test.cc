#include "services/attention_worker/attention_service.h"

#include <cstdint>
#include <string>
#include <vector>

#include "common/engine/expert_placement.h"
#include "gtest/gtest.h"
#include "services/attention_worker/step_loop.h"

namespace moe::services {
namespace {

TEST(ToGenerationRequestTest, CopiesEveryField) {
  // A field added to the proto must be set and checked here too.
  ASSERT_EQ(v1::AttentionGenerateRequest::descriptor()->field_count(), 9);
  ASSERT_EQ(v1::AttentionSampling::descriptor()->field_count(), 8);
  v1::AttentionGenerateRequest request;
  request.set_request_id("a");
  request.add_prompt(5);
  request.add_prompt(6);
  request.mutable_sampling()->set_temperature(0.5f);
  request.mutable_sampling()->set_top_p(0.25f);
  request.mutable_sampling()->set_top_k(7);
  request.mutable_sampling()->set_min_p(0.125f);
  request.mutable_sampling()->set_repetition_penalty(1.5f);
  request.mutable_sampling()->set_seed(99);
  request.mutable_sampling()->set_presence_penalty(-0.75f);
  request.mutable_sampling()->set_frequency_penalty(1.25f);
  request.set_max_new_tokens(12);
  request.set_min_new_tokens(2);
  request.add_stop_token_ids(3);
  request.set_ignore_eos(true);
  request.set_top_logprobs(4);
  request.set_generated_offset(1);
  auto out = ToGenerationRequest(request);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->id, "a");
  EXPECT_EQ(out->prompt, (std::vector<int32_t>{5, 6}));
  EXPECT_EQ(out->sampling.temperature, 0.5);
  EXPECT_EQ(out->sampling.top_p, 0.25);
  EXPECT_EQ(out->sampling.top_k, 7);
  EXPECT_EQ(out->sampling.min_p, 0.125);
  EXPECT_EQ(out->sampling.repetition_penalty, 1.5);
  EXPECT_EQ(out->sampling.seed, 99u);
  EXPECT_EQ(out->sampling.presence_penalty, -0.75);
  EXPECT_EQ(out->sampling.frequency_penalty, 1.25);
  EXPECT_EQ(out->max_new_tokens, 12);
  EXPECT_EQ(out->min_new_tokens, 2);
  EXPECT_EQ(out->stop_token_ids, (std::vector<int32_t>{3}));
  EXPECT_TRUE(out->ignore_eos);
  EXPECT_EQ(out->top_logprobs, 4);
  EXPECT_EQ(out->generated_offset, 1);
}

TEST(ToGenerationRequestTest, AbsentSamplingIsGreedy) {
  v1::AttentionGenerateRequest request;
  request.set_request_id("a");
  auto out = ToGenerationRequest(request);
  ASSERT_TRUE(out.ok());
  EXPECT_TRUE(out->sampling.greedy());
}

TEST(ToGenerationRequestTest, RejectsBadFieldsNamingThem) {
  v1::AttentionGenerateRequest request;
  EXPECT_EQ(ToGenerationRequest(request).status().message(), "request_id: must not be empty");
  request.set_request_id(std::string(257, 'x'));
  EXPECT_EQ(ToGenerationRequest(request).status().message(), "request_id: is longer than 256 bytes");
  request.set_request_id(std::string(256, 'x'));
  EXPECT_TRUE(ToGenerationRequest(request).ok());
  request.set_request_id("a");
  request.set_top_logprobs(21);
  EXPECT_EQ(ToGenerationRequest(request).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ToGenerationRequest(request).status().message(), "top_logprobs: must be in [0, 20], got 21");
  request.set_top_logprobs(0);
  request.add_stop_token_ids(-1);
  EXPECT_EQ(ToGenerationRequest(request).status().message(), "stop_token_ids: negative id -1");
}

// moe_attention_expert_load_ratio over 2 home expert workers and 2 joinable slots (a chart with
// expert.autoscaling lists joinable slots nothing may run on).
TEST(ExpertLoadRatioTest, CountsOnlyTheWorkersThePlacementRoutesToOrThatHadRows) {
  const engine::ExpertPlacement home =
      *engine::ExpertPlacement(8, {1000, 1001}).WithJoinableWorkers({1002, 1003});
  // Home only: the joinable slots take no rows and are not zero-load workers of the ratio.
  EXPECT_DOUBLE_EQ(ExpertLoadRatio(home, {100, 100, 0, 0}, nullptr), 1.0);
  EXPECT_DOUBLE_EQ(ExpertLoadRatio(home, {300, 100, 0, 0}, nullptr), 1.5);
  // A home worker that took no rows while live is real imbalance: it counts.
  EXPECT_DOUBLE_EQ(ExpertLoadRatio(home, {200, 0, 0, 0}, nullptr), 2.0);
  // ... but not while it is down (its replica took its rows).
  EXPECT_DOUBLE_EQ(ExpertLoadRatio(home, {200, 0, 0, 0}, [](int64_t w) { return w != 1; }), 1.0);
  // Joinable worker 2 holds copies of experts 0..3 in the placement in use: it counts, even idle,
  // once it is live; slot 3 does not.
  std::vector<std::vector<int64_t>> extras(8);
  for (int e = 0; e < 4; ++e) extras[static_cast<size_t>(e)] = {2};
  const engine::ExpertPlacement joined = *home.WithExtras(extras, 1);
  EXPECT_DOUBLE_EQ(ExpertLoadRatio(joined, {100, 100, 100, 0}, nullptr), 1.0);
  EXPECT_DOUBLE_EQ(ExpertLoadRatio(joined, {150, 150, 0, 0}, nullptr), 1.5);
  EXPECT_DOUBLE_EQ(ExpertLoadRatio(joined, {150, 150, 0, 0}, [](int64_t w) { return w != 2; }), 1.0);
  // A worker that had rows in the window counts whatever the placement now says (it left since).
  EXPECT_DOUBLE_EQ(ExpertLoadRatio(home, {100, 100, 0, 100}, nullptr), 1.0);
  EXPECT_DOUBLE_EQ(ExpertLoadRatio(home, {0, 0, 0, 0}, nullptr), 1.0);
}

}  // namespace
}  // namespace moe::services
