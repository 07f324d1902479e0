#include "common/engine/engine.h"

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/util/test_models.h"

namespace moe::engine {
namespace {

using ::testing::HasSubstr;

std::vector<int32_t> Prompt(int64_t length, int32_t seed) {
  std::vector<int32_t> ids;
  uint32_t x = static_cast<uint32_t>(seed) * 2654435761u + 12345u;
  for (int64_t i = 0; i < length; ++i) {
    x = x * 1664525u + 1013904223u;
    ids.push_back(static_cast<int32_t>(x % 151643u));
  }
  return ids;
}

std::unique_ptr<Engine> MakeEngine(const std::string& dtype, EngineOptions options = {}, int shards = 1,
                                   const std::string& preset = "tiny") {
  options.kv_cache_bytes = int64_t{64} << 20;
  auto engine = Engine::CreateEmbedded(moe::testing::TestModelDir(preset, dtype), options, shards);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

GenerationRequest Greedy(const std::string& id, std::vector<int32_t> prompt, int64_t max_new) {
  GenerationRequest r;
  r.id = id;
  r.prompt = std::move(prompt);
  r.sampling.temperature = 0.0;
  r.max_new_tokens = max_new;
  r.ignore_eos = true;
  return r;
}

struct Output {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  FinishReason finish = FinishReason::kNone;
  absl::Status error;
};

std::map<std::string, Output> RunToCompletion(Engine& engine, int max_steps = 10000) {
  std::map<std::string, Output> outputs;
  for (int step = 0; engine.HasWork() && step < max_steps; ++step) {
    for (const TokenEvent& e : engine.Step()) {
      Output& o = outputs[e.request_id];
      if (e.token_id >= 0) {
        o.tokens.push_back(e.token_id);
        o.logprobs.push_back(e.logprob);
      }
      if (e.finish_reason != FinishReason::kNone) {
        o.finish = e.finish_reason;
        o.error = e.error;
      }
    }
  }
  EXPECT_FALSE(engine.HasWork()) << "did not finish in " << max_steps << " steps";
  return outputs;
}

bool BitEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class EngineDTypeTest : public ::testing::TestWithParam<std::string> {};

TEST_P(EngineDTypeTest, LogitsAreBitIdenticalAloneOrBatchedWithOtherLengths) {
  auto engine = MakeEngine(GetParam());
  ASSERT_NE(engine, nullptr);
  const auto a = Prompt(13, 1), b = Prompt(40, 2), c = Prompt(1, 3);
  auto alone = engine->PromptLogits(a);
  ASSERT_TRUE(alone.ok()) << alone.status();
  auto batched = engine->BatchLogits({b, a, c});
  ASSERT_TRUE(batched.ok()) << batched.status();
  EXPECT_TRUE(BitEqual((*batched)[1], *alone));
  auto c_alone = engine->PromptLogits(c);
  ASSERT_TRUE(c_alone.ok());
  EXPECT_TRUE(BitEqual((*batched)[2], *c_alone));
  EXPECT_EQ(engine->num_free_blocks(), engine->num_blocks());
}

TEST_P(EngineDTypeTest, ChunkedPrefillGivesTheSameGreedyContinuation) {
  EngineOptions whole;
  whole.max_step_tokens = 512;
  EngineOptions chunked;
  chunked.max_step_tokens = 7;
  auto a = MakeEngine(GetParam(), whole);
  auto b = MakeEngine(GetParam(), chunked);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  const auto prompt = Prompt(61, 4);
  ASSERT_TRUE(a->AddRequest(Greedy("r", prompt, 16)).ok());
  ASSERT_TRUE(b->AddRequest(Greedy("r", prompt, 16)).ok());
  auto out_a = RunToCompletion(*a);
  auto out_b = RunToCompletion(*b);
  ASSERT_EQ(out_a["r"].tokens.size(), 16u);
  EXPECT_EQ(out_a["r"].tokens, out_b["r"].tokens);
  EXPECT_TRUE(BitEqual(out_a["r"].logprobs, out_b["r"].logprobs));
  EXPECT_EQ(out_a["r"].finish, FinishReason::kLength);
}

TEST_P(EngineDTypeTest, ExpertShardingDoesNotChangeLogits) {
  auto one = MakeEngine(GetParam(), {}, 1);
  auto three = MakeEngine(GetParam(), {}, 3);
  auto seven = MakeEngine(GetParam(), {}, 7);
  const auto prompt = Prompt(29, 5);
  auto l1 = one->PromptLogits(prompt);
  auto l3 = three->PromptLogits(prompt);
  auto l7 = seven->PromptLogits(prompt);
  ASSERT_TRUE(l1.ok() && l3.ok() && l7.ok());
  EXPECT_TRUE(BitEqual(*l1, *l3));
  EXPECT_TRUE(BitEqual(*l1, *l7));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, EngineDTypeTest, ::testing::Values("bf16", "fp8"));

TEST(EngineTest, ConcurrentRequestsMatchRunningAlone) {
  auto engine = MakeEngine("bf16");
  std::map<std::string, Output> alone;
  for (int i = 0; i < 4; ++i) {
    const std::string id = "r" + std::to_string(i);
    ASSERT_TRUE(engine->AddRequest(Greedy(id, Prompt(5 + 9 * i, 10 + i), 6 + i)).ok());
    alone[id] = RunToCompletion(*engine)[id];
  }
  for (int i = 0; i < 4; ++i) {
    const std::string id = "r" + std::to_string(i);
    ASSERT_TRUE(engine->AddRequest(Greedy(id, Prompt(5 + 9 * i, 10 + i), 6 + i)).ok());
  }
  auto together = RunToCompletion(*engine);
  for (const auto& [id, out] : alone) {
    EXPECT_EQ(together[id].tokens, out.tokens) << id;
    EXPECT_TRUE(BitEqual(together[id].logprobs, out.logprobs)) << id;
  }
  EXPECT_EQ(engine->num_free_blocks(), engine->num_blocks());
}

TEST(EngineTest, PreemptionUnderKvPressureKeepsOutputsExact) {
  EngineOptions roomy;
  auto reference = MakeEngine("bf16", roomy);
  EngineOptions tight;
  tight.kv_block_size = 4;
  tight.num_kv_blocks = 12;  // 48 tokens for 3 sequences that need 30 each: preemption happens
  auto engine = Engine::CreateEmbedded(moe::testing::TestModelDir("tiny", "bf16"), tight, 1);
  ASSERT_TRUE(engine.ok()) << engine.status();
  for (int i = 0; i < 3; ++i) {
    const std::string id = "p" + std::to_string(i);
    ASSERT_TRUE(reference->AddRequest(Greedy(id, Prompt(10, 20 + i), 20)).ok());
    ASSERT_TRUE((*engine)->AddRequest(Greedy(id, Prompt(10, 20 + i), 20)).ok());
  }
  auto expected = RunToCompletion(*reference);
  auto actual = RunToCompletion(**engine);
  for (const auto& [id, out] : expected) {
    EXPECT_EQ(actual[id].tokens, out.tokens) << id;
    EXPECT_EQ(actual[id].finish, FinishReason::kLength);
  }
  EXPECT_EQ((*engine)->num_free_blocks(), (*engine)->num_blocks());
}

TEST(EngineTest, CancelFreesTheSequenceAtTheNextStep) {
  auto engine = MakeEngine("bf16");
  ASSERT_TRUE(engine->AddRequest(Greedy("c", Prompt(20, 7), 100)).ok());
  engine->Step();
  EXPECT_LT(engine->num_free_blocks(), engine->num_blocks());
  engine->Cancel("c");
  auto events = engine->Step();
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events[0].finish_reason, FinishReason::kAbort);
  EXPECT_EQ(engine->num_free_blocks(), engine->num_blocks());
  EXPECT_FALSE(engine->HasWork());
}

TEST(EngineTest, StopsOnEosUnlessIgnored) {
  auto engine = MakeEngine("bf16");
  const auto prompt = Prompt(8, 9);
  ASSERT_TRUE(engine->AddRequest(Greedy("probe", prompt, 1)).ok());
  const int32_t first = RunToCompletion(*engine)["probe"].tokens.at(0);
  // Make the first greedy token a stop token: generation ends after one token with kStop.
  GenerationRequest r = Greedy("s", prompt, 10);
  r.stop_token_ids = {first};
  ASSERT_TRUE(engine->AddRequest(r).ok());
  auto out = RunToCompletion(*engine)["s"];
  EXPECT_EQ(out.tokens, std::vector<int32_t>{first});
  EXPECT_EQ(out.finish, FinishReason::kStop);
  EXPECT_TRUE(out.error.ok()) << out.error;
}

TEST(EngineTest, RejectsBadRequestsNamingTheField) {
  auto engine = MakeEngine("bf16");
  auto expect_error = [&](GenerationRequest r, absl::StatusCode code, const std::string& field) {
    absl::Status s = engine->AddRequest(std::move(r));
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(field));
  };
  expect_error(Greedy("a", {}, 4), absl::StatusCode::kInvalidArgument, "prompt");
  expect_error(Greedy("a", {151936}, 4), absl::StatusCode::kInvalidArgument, "prompt");
  expect_error(Greedy("a", {-1}, 4), absl::StatusCode::kInvalidArgument, "prompt");
  expect_error(Greedy("a", Prompt(engine->max_model_len(), 1), 4), absl::StatusCode::kInvalidArgument,
               "prompt");
  expect_error(Greedy("a", {1}, 0), absl::StatusCode::kInvalidArgument, "max_new_tokens");
  GenerationRequest logprobs = Greedy("a", {1}, 1);
  logprobs.top_logprobs = 21;
  expect_error(logprobs, absl::StatusCode::kInvalidArgument, "top_logprobs");
  ASSERT_TRUE(engine->AddRequest(Greedy("dup", {1}, 1)).ok());
  expect_error(Greedy("dup", {1}, 1), absl::StatusCode::kAlreadyExists, "dup");
  RunToCompletion(*engine);

  auto empty = engine->PromptLogits({});
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  auto out_of_range = engine->PromptLogits({5, 151936});
  EXPECT_EQ(out_of_range.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(EngineTest, ADeadExpertShardFailsTheStepWithoutHanging) {
  EngineOptions options;
  options.moe_timeout = absl::Seconds(5);
  auto engine = MakeEngine("bf16", options, 2);
  ASSERT_TRUE(engine->AddRequest(Greedy("x", Prompt(6, 11), 50)).ok());
  engine->Step();
  engine->DisconnectExpertShardForTest(1);
  auto out = RunToCompletion(*engine, 5);
  EXPECT_EQ(out["x"].finish, FinishReason::kError);
  EXPECT_EQ(out["x"].error.code(), absl::StatusCode::kUnavailable) << out["x"].error;
  EXPECT_EQ(engine->num_free_blocks(), engine->num_blocks());
}

TEST(EngineTest, DenseQwen3RunsWithoutExperts) {
  auto engine = MakeEngine("bf16", {}, 1, "dense-tiny");
  ASSERT_NE(engine, nullptr);
  EXPECT_FALSE(engine->config().IsMoe());
  auto alone = engine->PromptLogits(Prompt(9, 12));
  ASSERT_TRUE(alone.ok()) << alone.status();
  auto batched = engine->BatchLogits({Prompt(3, 13), Prompt(9, 12)});
  ASSERT_TRUE(batched.ok());
  EXPECT_TRUE(BitEqual((*batched)[1], *alone));
}

}  // namespace
}  // namespace moe::engine
