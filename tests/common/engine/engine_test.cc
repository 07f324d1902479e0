#include "common/engine/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/engine/testing/requests.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/util/test_models.h"

namespace moe::engine {
namespace {

using engine_testing::GreedyRequest;
using engine_testing::PseudoRandomPrompt;

using ::testing::HasSubstr;

std::unique_ptr<Engine> MakeEngine(const std::string& dtype, EngineOptions options = {}, int shards = 1,
                                   const std::string& preset = "tiny", int replicas = 1) {
  options.kv_cache_bytes = int64_t{64} << 20;
  auto engine = Engine::CreateEmbedded(moe::testing::TestModelDir(preset, dtype), options, shards, replicas);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

struct Output {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  FinishReason finish = FinishReason::kNone;
  absl::Status error;
};

// Adds `events` to `outputs`, by request id.
void Collect(const std::vector<TokenEvent>& events, std::map<std::string, Output>* outputs) {
  for (const TokenEvent& e : events) {
    Output& o = (*outputs)[e.request_id];
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

// Steps until no work is left. `preemptions`, if set, receives the scheduler's preemptions summed
// over the steps that ran a forward pass; `max_micro_batches`, the most micro-batches a step ran.
std::map<std::string, Output> RunToCompletion(Engine& engine, int max_steps = 10000,
                                              int64_t* preemptions = nullptr,
                                              int64_t* max_micro_batches = nullptr) {
  std::map<std::string, Output> outputs;
  for (int step = 0; engine.HasWork() && step < max_steps; ++step) {
    const uint64_t steps_before = engine.steps();
    const std::vector<TokenEvent> events = engine.Step();
    if (preemptions != nullptr && engine.steps() != steps_before) {
      *preemptions += engine.last_step_stats().num_preemptions;
    }
    if (max_micro_batches != nullptr && engine.steps() != steps_before) {
      *max_micro_batches = std::max(*max_micro_batches, engine.last_step_stats().micro_batches);
    }
    Collect(events, &outputs);
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
  const auto a = PseudoRandomPrompt(13, 1), b = PseudoRandomPrompt(40, 2), c = PseudoRandomPrompt(1, 3);
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
  const auto prompt = PseudoRandomPrompt(61, 4);
  ASSERT_TRUE(a->AddRequest(GreedyRequest("r", prompt, 16)).ok());
  ASSERT_TRUE(b->AddRequest(GreedyRequest("r", prompt, 16)).ok());
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
  const auto prompt = PseudoRandomPrompt(29, 5);
  auto l1 = one->PromptLogits(prompt);
  auto l3 = three->PromptLogits(prompt);
  auto l7 = seven->PromptLogits(prompt);
  ASSERT_TRUE(l1.ok() && l3.ok() && l7.ok());
  EXPECT_TRUE(BitEqual(*l1, *l3));
  EXPECT_TRUE(BitEqual(*l1, *l7));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, EngineDTypeTest, ::testing::Values("bf16", "fp8"));

// A migrated request (prompt + the tokens another worker generated, generated_offset set) continues
// exactly where the first run was: greedy and seeded sampling, tokens and logprobs.
TEST(EngineTest, AMigratedRequestContinuesExactlyAsTheUninterruptedOne) {
  auto engine = MakeEngine("bf16");
  ASSERT_NE(engine, nullptr);
  const auto prompt = PseudoRandomPrompt(9, 21);
  constexpr int kMaxNew = 24, kDone = 10;
  for (const double temperature : {0.0, 1.5}) {
    GenerationRequest whole = GreedyRequest("whole", prompt, kMaxNew);
    whole.sampling.temperature = temperature;
    whole.sampling.seed = 7;
    ASSERT_TRUE(engine->AddRequest(whole).ok());
    const Output expected = RunToCompletion(*engine)["whole"];
    ASSERT_EQ(expected.tokens.size(), static_cast<size_t>(kMaxNew));

    GenerationRequest migrated = whole;
    migrated.id = "migrated";
    migrated.prompt.insert(migrated.prompt.end(), expected.tokens.begin(), expected.tokens.begin() + kDone);
    migrated.generated_offset = kDone;
    ASSERT_TRUE(engine->AddRequest(migrated).ok());
    const Output rest = RunToCompletion(*engine)["migrated"];
    EXPECT_EQ(rest.finish, FinishReason::kLength);
    EXPECT_EQ(rest.tokens, std::vector<int32_t>(expected.tokens.begin() + kDone, expected.tokens.end()))
        << "temperature " << temperature;
    EXPECT_TRUE(BitEqual(rest.logprobs,
                         std::vector<float>(expected.logprobs.begin() + kDone, expected.logprobs.end())))
        << "temperature " << temperature;
  }
  GenerationRequest bad = GreedyRequest("bad", prompt, 4);
  bad.generated_offset = 4;  // not below max_new_tokens
  absl::Status status = engine->AddRequest(bad);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("generated_offset"));
  bad = GreedyRequest("bad", prompt, 64);
  bad.generated_offset = static_cast<int64_t>(prompt.size());  // no original prompt token left
  EXPECT_EQ(engine->AddRequest(bad).code(), absl::StatusCode::kInvalidArgument);
}

TEST(EngineTest, ConcurrentRequestsMatchRunningAlone) {
  auto engine = MakeEngine("bf16");
  std::map<std::string, Output> alone;
  for (int i = 0; i < 4; ++i) {
    const std::string id = "r" + std::to_string(i);
    ASSERT_TRUE(engine->AddRequest(GreedyRequest(id, PseudoRandomPrompt(5 + 9 * i, 10 + i), 6 + i)).ok());
    alone[id] = RunToCompletion(*engine)[id];
  }
  for (int i = 0; i < 4; ++i) {
    const std::string id = "r" + std::to_string(i);
    ASSERT_TRUE(engine->AddRequest(GreedyRequest(id, PseudoRandomPrompt(5 + 9 * i, 10 + i), 6 + i)).ok());
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
    ASSERT_TRUE(reference->AddRequest(GreedyRequest(id, PseudoRandomPrompt(10, 20 + i), 20)).ok());
    ASSERT_TRUE((*engine)->AddRequest(GreedyRequest(id, PseudoRandomPrompt(10, 20 + i), 20)).ok());
  }
  auto expected = RunToCompletion(*reference);
  int64_t preemptions = 0;
  auto actual = RunToCompletion(**engine, 10000, &preemptions);
  EXPECT_GT(preemptions, 0);
  ASSERT_EQ(expected.size(), 3u);
  for (const auto& [id, out] : expected) {
    EXPECT_EQ(actual[id].tokens, out.tokens) << id;
    EXPECT_EQ(actual[id].finish, FinishReason::kLength);
    EXPECT_EQ(out.tokens.size(), 20u) << id;
  }
  EXPECT_EQ((*engine)->num_free_blocks(), (*engine)->num_blocks());
}

TEST(EngineTest, CancelFreesTheSequenceAtTheNextStep) {
  auto engine = MakeEngine("bf16");
  ASSERT_TRUE(engine->AddRequest(GreedyRequest("c", PseudoRandomPrompt(20, 7), 100)).ok());
  engine->Step();
  EXPECT_LT(engine->num_free_blocks(), engine->num_blocks());
  engine->Cancel("c");
  auto events = engine->Step();
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events[0].finish_reason, FinishReason::kAbort);
  EXPECT_EQ(engine->num_free_blocks(), engine->num_blocks());
  EXPECT_FALSE(engine->HasWork());
}

TEST(EngineTest, StepStatsSplitTheMoeHopsIntoTransportAndExpertWaitConsistently) {
  auto engine = MakeEngine("bf16", {}, /*shards=*/2);
  ASSERT_TRUE(engine->AddRequest(GreedyRequest("s", PseudoRandomPrompt(12, 3), 4)).ok());
  absl::Duration expert_wait_total;
  for (int step = 0; engine->HasWork() && step < 100; ++step) {
    const uint64_t steps_before = engine->steps();
    engine->Step();
    if (engine->steps() == steps_before) continue;
    const StepStats& stats = engine->last_step_stats();
    // transport = dispatch + the part of combine's wait not spent in the experts
    EXPECT_GE(stats.transport, stats.dispatch);
    EXPECT_GE(stats.expert_wait, absl::ZeroDuration());
    EXPECT_LE(stats.transport - stats.dispatch + stats.expert_wait, stats.combine);
    expert_wait_total += stats.expert_wait;
  }
  // The in-process shards stamp their answers (ExpertShardServer), so some time is the experts'.
  EXPECT_GT(expert_wait_total, absl::ZeroDuration());
}

TEST(EngineTest, StopsOnARequestStopTokenId) {
  auto engine = MakeEngine("bf16");
  const auto prompt = PseudoRandomPrompt(8, 9);
  ASSERT_TRUE(engine->AddRequest(GreedyRequest("probe", prompt, 1)).ok());
  const int32_t first = RunToCompletion(*engine)["probe"].tokens.at(0);
  // Make the first greedy token a stop token: generation ends after one token with kStop.
  GenerationRequest r = GreedyRequest("s", prompt, 10);
  r.stop_token_ids = {first};
  ASSERT_TRUE(engine->AddRequest(r).ok());
  auto out = RunToCompletion(*engine)["s"];
  EXPECT_EQ(out.tokens, std::vector<int32_t>{first});
  EXPECT_EQ(out.finish, FinishReason::kStop);
  EXPECT_TRUE(out.error.ok()) << out.error;
}

// The tiny model never picks its real EOS ids greedily (the planted successor maps only onto ordinary
// tokens), so these tests use a copy of it whose generation_config.json names a token it does pick.
class EngineEosTest : public ::testing::Test {
 protected:
  void SetUp() override {
    probe_engine_ = MakeEngine("bf16");
    ASSERT_NE(probe_engine_, nullptr);
    ASSERT_TRUE(probe_engine_->AddRequest(GreedyRequest("probe", prompt_, 8)).ok());
    greedy_ = RunToCompletion(*probe_engine_)["probe"].tokens;
    ASSERT_EQ(greedy_.size(), 8u);
    eos_ = greedy_[2];
    ASSERT_NE(greedy_[0], eos_);
    ASSERT_NE(greedy_[1], eos_);
  }

  // An engine on the tiny bf16 model whose only EOS id is `eos`.
  std::unique_ptr<Engine> EngineWithEos(int32_t eos) {
    namespace fs = std::filesystem;
    const fs::path source = moe::testing::TestModelDir("tiny", "bf16");
    const fs::path dir = moe::testing::MakeTempDir("moe-eos-model");
    for (const auto& entry : fs::directory_iterator(source)) {
      if (entry.path().filename() != "generation_config.json") {
        fs::create_symlink(entry.path(), dir / entry.path().filename());
      }
    }
    std::ifstream in(source / "generation_config.json");
    nlohmann::json config = nlohmann::json::parse(in);
    config["eos_token_id"] = std::vector<int32_t>{eos};
    std::ofstream(dir / "generation_config.json") << config.dump(2);
    EngineOptions options;
    options.kv_cache_bytes = int64_t{64} << 20;
    auto engine = Engine::CreateEmbedded(dir.string(), options, 1);
    EXPECT_TRUE(engine.ok()) << engine.status();
    if (engine.ok()) {
      EXPECT_EQ((*engine)->generation_config().eos_token_ids, std::vector<int64_t>{eos});
    }
    return engine.ok() ? *std::move(engine) : nullptr;
  }

  GenerationRequest Request(bool ignore_eos, int64_t min_new_tokens) const {
    GenerationRequest r = GreedyRequest("e", prompt_, 8);
    r.ignore_eos = ignore_eos;
    r.min_new_tokens = min_new_tokens;
    return r;
  }

  const std::vector<int32_t> prompt_ = PseudoRandomPrompt(8, 9);
  std::unique_ptr<Engine> probe_engine_;
  std::vector<int32_t> greedy_;  // the greedy continuation with no EOS in force
  int32_t eos_ = -1;             // its third token
};

TEST_F(EngineEosTest, StopsOnEosUnlessIgnored) {
  auto engine = EngineWithEos(eos_);
  ASSERT_NE(engine, nullptr);
  ASSERT_TRUE(engine->AddRequest(Request(/*ignore_eos=*/false, 0)).ok());
  auto stopped = RunToCompletion(*engine)["e"];
  EXPECT_EQ(stopped.tokens, std::vector<int32_t>(greedy_.begin(), greedy_.begin() + 3));
  EXPECT_EQ(stopped.finish, FinishReason::kStop);

  ASSERT_TRUE(engine->AddRequest(Request(/*ignore_eos=*/true, 0)).ok());
  auto ignored = RunToCompletion(*engine)["e"];
  EXPECT_EQ(ignored.tokens, greedy_);
  EXPECT_EQ(ignored.finish, FinishReason::kLength);
}

TEST_F(EngineEosTest, MinNewTokensHoldsEosBackUntilReached) {
  auto engine = EngineWithEos(eos_);
  ASSERT_NE(engine, nullptr);
  // EOS comes third; with min_new_tokens 3 it is masked for the first three tokens, so the third is
  // the best token other than EOS at that position.
  std::vector<int32_t> before_third = prompt_;
  before_third.insert(before_third.end(), greedy_.begin(), greedy_.begin() + 2);
  auto logits = engine->PromptLogits(before_third);
  ASSERT_TRUE(logits.ok()) << logits.status();
  (*logits)[static_cast<size_t>(eos_)] = -std::numeric_limits<float>::infinity();
  const auto runner_up =
      static_cast<int32_t>(std::max_element(logits->begin(), logits->end()) - logits->begin());
  ASSERT_NE(runner_up, eos_);

  ASSERT_TRUE(engine->AddRequest(Request(/*ignore_eos=*/false, 3)).ok());
  auto out = RunToCompletion(*engine)["e"];
  ASSERT_GE(out.tokens.size(), 3u);
  EXPECT_EQ(out.tokens[0], greedy_[0]);
  EXPECT_EQ(out.tokens[1], greedy_[1]);
  EXPECT_EQ(out.tokens[2], runner_up);
  // Past min_new_tokens EOS ends the request again whenever it is picked.
  for (size_t i = 0; i + 1 < out.tokens.size(); ++i) EXPECT_NE(out.tokens[i], eos_) << i;
  if (out.finish == FinishReason::kStop) {
    EXPECT_EQ(out.tokens.back(), eos_);
  } else {
    EXPECT_EQ(out.finish, FinishReason::kLength);
    EXPECT_EQ(out.tokens.size(), 8u);
  }

  // min_new_tokens 2 leaves the third position free: EOS is picked there and ends the request.
  GenerationRequest two = Request(/*ignore_eos=*/false, 2);
  ASSERT_TRUE(engine->AddRequest(two).ok());
  EXPECT_EQ(RunToCompletion(*engine)["e"].tokens, std::vector<int32_t>(greedy_.begin(), greedy_.begin() + 3));
}

TEST(EngineTest, RejectsBadRequestsNamingTheField) {
  auto engine = MakeEngine("bf16");
  auto expect_error = [&](GenerationRequest r, absl::StatusCode code, const std::string& field) {
    absl::Status s = engine->AddRequest(std::move(r));
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(field));
  };
  expect_error(GreedyRequest("a", {}, 4), absl::StatusCode::kInvalidArgument, "prompt");
  expect_error(GreedyRequest("a", {151936}, 4), absl::StatusCode::kInvalidArgument, "prompt");
  expect_error(GreedyRequest("a", {-1}, 4), absl::StatusCode::kInvalidArgument, "prompt");
  expect_error(GreedyRequest("a", PseudoRandomPrompt(engine->max_model_len(), 1), 4),
               absl::StatusCode::kInvalidArgument, "prompt");
  expect_error(GreedyRequest("a", {1}, 0), absl::StatusCode::kInvalidArgument, "max_new_tokens");
  GenerationRequest logprobs = GreedyRequest("a", {1}, 1);
  logprobs.top_logprobs = 21;
  expect_error(logprobs, absl::StatusCode::kInvalidArgument, "top_logprobs");
  // Sampling values are checked here too, not only by whoever resolved them.
  const std::vector<std::pair<std::function<void(request::SamplingParams&)>, std::string>> bad_sampling = {
      {[](auto& p) { p.temperature = std::nan(""); }, "sampling: temperature"},
      {[](auto& p) { p.temperature = std::numeric_limits<double>::infinity(); }, "sampling: temperature"},
      {[](auto& p) { p.temperature = -0.5; }, "sampling: temperature"},
      {[](auto& p) { p.top_p = 0; }, "sampling: top_p"},
      {[](auto& p) { p.top_k = -2; }, "sampling: top_k"},
      {[](auto& p) { p.min_p = 1.5; }, "sampling: min_p"},
      {[](auto& p) { p.repetition_penalty = 0; }, "sampling: repetition_penalty"},
      {[](auto& p) { p.presence_penalty = 2.5; }, "sampling: presence_penalty"},
      {[](auto& p) { p.presence_penalty = std::nan(""); }, "sampling: presence_penalty"},
      {[](auto& p) { p.frequency_penalty = -3; }, "sampling: frequency_penalty"},
      {[](auto& p) { p.frequency_penalty = std::numeric_limits<double>::infinity(); },
       "sampling: frequency_penalty"},
  };
  for (const auto& [spoil, field] : bad_sampling) {
    GenerationRequest r = GreedyRequest("s", {1}, 1);
    spoil(r.sampling);
    expect_error(r, absl::StatusCode::kInvalidArgument, field);
  }
  ASSERT_TRUE(engine->AddRequest(GreedyRequest("dup", {1}, 1)).ok());
  expect_error(GreedyRequest("dup", {1}, 1), absl::StatusCode::kAlreadyExists, "dup");
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
  ASSERT_TRUE(engine->AddRequest(GreedyRequest("x", PseudoRandomPrompt(6, 11), 50)).ok());
  engine->Step();
  engine->DisconnectExpertShardForTest(1);
  auto out = RunToCompletion(*engine, 5);
  EXPECT_EQ(out["x"].finish, FinishReason::kError);
  EXPECT_EQ(out["x"].error.code(), absl::StatusCode::kUnavailable) << out["x"].error;
  EXPECT_EQ(engine->num_free_blocks(), engine->num_blocks());
}

// Expert replicas (docs/architecture.md#expert-replicas-and-failover): with every shard on two
// in-process workers, the outputs are those of one shard, and when a worker dies mid-generation its
// part of each round goes to the other copy: every request finishes, bit-identical.
TEST(EngineTest, ReplicatedExpertsFailOverWithoutChangingTheOutputs) {
  auto one = MakeEngine("bf16");
  auto replicated = MakeEngine("bf16", {}, /*shards=*/2, "tiny", /*replicas=*/2);
  ASSERT_NE(one, nullptr);
  ASSERT_NE(replicated, nullptr);
  for (Engine* engine : {one.get(), replicated.get()}) {
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE(
          engine->AddRequest(GreedyRequest(absl::StrCat("r", i), PseudoRandomPrompt(5 + 7 * i, 30 + i), 24))
              .ok());
    }
  }
  const auto expected = RunToCompletion(*one);
  // A few steps on all four workers, then worker 1 (shard 1's first copy) dies.
  std::map<std::string, Output> outputs;
  for (int i = 0; i < 4; ++i) Collect(replicated->Step(), &outputs);
  replicated->DisconnectExpertShardForTest(1);
  int64_t resends = 0;
  for (int i = 0; i < 10000 && replicated->HasWork(); ++i) {
    Collect(replicated->Step(), &outputs);
    resends += replicated->last_step_stats().expert_resends;
  }
  EXPECT_GT(resends, 0) << "no round failed over";
  ASSERT_EQ(outputs.size(), expected.size());
  for (const auto& [id, want] : expected) {
    const Output& got = outputs[id];
    EXPECT_EQ(got.finish, FinishReason::kLength) << id << ": " << got.error;
    EXPECT_EQ(got.tokens, want.tokens) << id;
    EXPECT_TRUE(BitEqual(got.logprobs, want.logprobs)) << id;
  }
}

// Ping-pong micro-batches (docs/architecture.md#micro-batches): two micro-batches, on one shard,
// three shards or two shards with two copies each, give the bits of one micro-batch on one shard.
// MOE_WEIGHTS_MEMORY=huge_pages (the default where transparent huge pages are on) serves from the
// mapping until the background copies are made, then switches between two forward passes: the
// logits are bit-identical on either side of the switch, and after it the dense weights and every
// expert shard are in their huge-page copies. (With the variable set to `mapped` there is nothing
// to switch: then only the first half holds.)
TEST(EngineTest, TheSwitchIntoHugePagesChangesNoLogit) {
  for (const std::string dtype : {"bf16", "fp8"}) {
    auto engine = MakeEngine(dtype, {}, /*shards=*/2);
    ASSERT_NE(engine, nullptr);
    const std::vector<int32_t> prompt = PseudoRandomPrompt(21, 5);
    absl::StatusOr<std::vector<float>> before = engine->PromptLogits(prompt);
    ASSERT_TRUE(before.ok()) << before.status();
    engine->WaitForHugePages();
    absl::StatusOr<std::vector<float>> after = engine->PromptLogits(prompt);
    ASSERT_TRUE(after.ok()) << after.status();
    EXPECT_TRUE(BitEqual(*before, *after)) << dtype;
    if (model::WeightsMemoryFromEnv() != model::WeightsMemory::kHugePages) continue;
    EXPECT_NE(engine->dense_weights().resident, nullptr) << dtype;
    ASSERT_NE(engine->embedded_experts(), nullptr);
    for (const auto& block : engine->embedded_experts()->blocks()) {
      EXPECT_TRUE(block->home_in_huge_pages()) << dtype << " experts from " << block->first_expert();
    }
  }
}

TEST(EngineTest, TwoMicroBatchesGiveTheSameOutputsAsOne) {
  EngineOptions two;
  two.micro_batches = 2;
  two.max_step_tokens = 40;  // chunked prefill: steps mix prompt chunks and decode tokens
  auto reference = MakeEngine("bf16");
  ASSERT_NE(reference, nullptr);
  std::vector<std::unique_ptr<Engine>> engines;
  engines.push_back(MakeEngine("bf16", two));
  engines.push_back(MakeEngine("bf16", two, /*shards=*/3));
  engines.push_back(MakeEngine("bf16", two, /*shards=*/2, "tiny", /*replicas=*/2));
  for (const auto& e : engines) ASSERT_NE(e, nullptr);
  auto add = [](Engine& engine) {
    for (int i = 0; i < 6; ++i) {
      ASSERT_TRUE(
          engine.AddRequest(GreedyRequest(absl::StrCat("r", i), PseudoRandomPrompt(3 + 11 * i, 60 + i), 12))
              .ok());
    }
  };
  add(*reference);
  const auto expected = RunToCompletion(*reference);
  for (size_t e = 0; e < engines.size(); ++e) {
    add(*engines[e]);
    int64_t micro_batches = 0;
    const auto got = RunToCompletion(*engines[e], 10000, nullptr, &micro_batches);
    EXPECT_EQ(micro_batches, 2) << "engine " << e;
    ASSERT_EQ(got.size(), expected.size()) << "engine " << e;
    for (const auto& [id, want] : expected) {
      const Output& o = got.at(id);
      EXPECT_EQ(o.finish, FinishReason::kLength) << "engine " << e << " " << id << ": " << o.error;
      EXPECT_EQ(o.tokens, want.tokens) << "engine " << e << " " << id;
      EXPECT_TRUE(BitEqual(o.logprobs, want.logprobs)) << "engine " << e << " " << id;
    }
  }
  EngineOptions three;
  three.micro_batches = 3;
  auto bad = Engine::CreateEmbedded(moe::testing::TestModelDir("tiny", "bf16"), three, 1);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("micro_batches"));
}

TEST(EngineTest, ALostShardWithEveryReplicaDeadFailsTheStepUnavailable) {
  EngineOptions options;
  options.moe_timeout = absl::Seconds(5);
  auto engine = MakeEngine("bf16", options, /*shards=*/2, "tiny", /*replicas=*/2);
  ASSERT_NE(engine, nullptr);
  ASSERT_TRUE(engine->AddRequest(GreedyRequest("x", PseudoRandomPrompt(6, 11), 50)).ok());
  engine->Step();
  engine->DisconnectExpertShardForTest(1);  // shard 1, copy 0
  engine->DisconnectExpertShardForTest(3);  // shard 1, copy 1
  auto out = RunToCompletion(*engine, 5);
  EXPECT_EQ(out["x"].finish, FinishReason::kError);
  EXPECT_EQ(out["x"].error.code(), absl::StatusCode::kUnavailable) << out["x"].error;
  EXPECT_THAT(std::string(out["x"].error.message()), HasSubstr("no live expert worker"));
  EXPECT_EQ(engine->num_free_blocks(), engine->num_blocks());
}

TEST(EngineTest, DenseQwen3RunsWithoutExperts) {
  auto engine = MakeEngine("bf16", {}, 1, "dense-tiny");
  ASSERT_NE(engine, nullptr);
  EXPECT_FALSE(engine->config().IsMoe());
  auto alone = engine->PromptLogits(PseudoRandomPrompt(9, 12));
  ASSERT_TRUE(alone.ok()) << alone.status();
  auto batched = engine->BatchLogits({PseudoRandomPrompt(3, 13), PseudoRandomPrompt(9, 12)});
  ASSERT_TRUE(batched.ok());
  EXPECT_TRUE(BitEqual((*batched)[1], *alone));
}

}  // namespace
}  // namespace moe::engine
