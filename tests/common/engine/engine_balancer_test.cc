// The expert load balancer in embedded mode (docs/architecture.md#expert-load-balancer): on a model
// with skewed routing, a plan applied between two steps of running requests lowers the max/mean
// expert-worker load and changes no output bit.
#include <bit>
#include <cstdint>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/engine/engine.h"
#include "common/engine/expert_balancer.h"
#include "common/engine/testing/requests.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/util/test_models.h"

namespace moe::engine {
namespace {

using engine_testing::GreedyRequest;
using engine_testing::PseudoRandomPrompt;
using ::testing::HasSubstr;

constexpr char kSkewed[] = "tiny+skewed";

std::unique_ptr<Engine> MakeEngine(const std::string& preset, int shards, int replicas = 1) {
  EngineOptions options;
  options.kv_cache_bytes = int64_t{64} << 20;
  auto engine = Engine::CreateEmbedded(moe::testing::TestModelDir(preset, "bf16"), options, shards, replicas);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

struct Output {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  FinishReason finish = FinishReason::kNone;
  std::string error;
};

void Collect(const std::vector<TokenEvent>& events, std::map<std::string, Output>* outputs) {
  for (const TokenEvent& e : events) {
    Output& o = (*outputs)[e.request_id];
    if (e.token_id >= 0) {
      o.tokens.push_back(e.token_id);
      o.logprobs.push_back(e.logprob);
    }
    if (e.finish_reason != FinishReason::kNone) {
      o.finish = e.finish_reason;
      o.error = e.error.ToString();
    }
  }
}

void AddRequests(Engine& engine) {
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(
        engine.AddRequest(GreedyRequest(absl::StrCat("r", i), PseudoRandomPrompt(7 + 13 * i, 24 + i), 24))
            .ok());
  }
}

// Every request ran to its length with the reference's tokens and logprobs, bit for bit.
void ExpectSameOutputs(const std::map<std::string, Output>& expected,
                       std::map<std::string, Output>& outputs) {
  ASSERT_EQ(outputs.size(), expected.size());
  for (const auto& [id, want] : expected) {
    const Output& got = outputs[id];
    EXPECT_EQ(got.finish, FinishReason::kLength) << id << ": " << got.error;
    EXPECT_EQ(got.tokens, want.tokens) << id;
    ASSERT_EQ(got.logprobs.size(), want.logprobs.size()) << id;
    for (size_t i = 0; i < want.logprobs.size(); ++i) {
      EXPECT_EQ(std::bit_cast<uint32_t>(got.logprobs[i]), std::bit_cast<uint32_t>(want.logprobs[i]))
          << id << " token " << i;
    }
  }
}

double MeasuredRatio(const ExpertLoad& load) {
  return MaxMeanRatio(std::vector<double>(load.worker_rows.begin(), load.worker_rows.end()));
}

// The skewed model's router really prefers experts 0..3 (make-model --hot-experts 4): each gets
// several times the mean share of rows.
TEST(EngineBalancerTest, TheSkewedModelRoutesMostRowsToTheHotExperts) {
  auto engine = MakeEngine(kSkewed, 4);
  ASSERT_NE(engine, nullptr);
  AddRequests(*engine);
  while (engine->HasWork()) engine->Step();
  const ExpertLoad load = engine->TakeExpertLoad();
  ASSERT_EQ(load.expert_rows.size(), 128u);
  uint64_t total = 0;
  for (uint64_t rows : load.expert_rows) total += rows;
  const double mean = static_cast<double>(total) / 128.0;
  for (int e = 0; e < 4; ++e) {
    std::cout << "expert " << e << ": " << static_cast<double>(load.expert_rows[e]) / mean << " x the mean"
              << std::endl;
    EXPECT_GT(static_cast<double>(load.expert_rows[e]), 4.0 * mean) << e;
  }
  // Shard 0 holds all four hot experts: worker 0 gets far more than its share.
  EXPECT_GT(MeasuredRatio(load), 1.3);
}

// Mid-generation, between two steps: plan from the window so far, load the copies, switch. The
// requests finish with the bits of an unbalanced single-shard run, and the measured max/mean load
// falls.
TEST(EngineBalancerTest, RebalancingMidGenerationKeepsOutputsAndLowersTheLoadRatio) {
  auto reference = MakeEngine(kSkewed, 1);
  auto engine = MakeEngine(kSkewed, 4);
  ASSERT_NE(reference, nullptr);
  ASSERT_NE(engine, nullptr);
  AddRequests(*reference);
  AddRequests(*engine);
  std::map<std::string, Output> expected, outputs;
  while (reference->HasWork()) Collect(reference->Step(), &expected);

  // Prefill and a few decode steps under the home shards.
  for (int i = 0; i < 6 && engine->HasWork(); ++i) Collect(engine->Step(), &outputs);
  const ExpertLoad before = engine->TakeExpertLoad();
  const int64_t budget = 4 * engine->embedded_experts()->ExpertBytes();
  auto plan = engine->RebalanceExperts(before, budget);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_FALSE(plan->added.empty());
  EXPECT_EQ(engine->expert_placement()->version(), 1u);
  EXPECT_LT(plan->ratio_after, plan->ratio_before);
  // The workers hold what the plan gave them.
  for (int64_t w = 0; w < 4; ++w) {
    EXPECT_EQ(engine->embedded_experts()->blocks()[static_cast<size_t>(w)]->ExtraExperts(),
              plan->placement.extra_experts(w))
        << w;
  }
  ASSERT_TRUE(engine->HasWork()) << "the switch must happen mid-generation";
  while (engine->HasWork()) Collect(engine->Step(), &outputs);
  const ExpertLoad after = engine->TakeExpertLoad();

  const double ratio_before = MeasuredRatio(before), ratio_after = MeasuredRatio(after);
  std::cout << "max/mean expert-worker load: before " << ratio_before << " after " << ratio_after
            << " (planner's model: " << plan->ratio_before << " -> " << plan->ratio_after << ", "
            << plan->added.size() << " copies)" << std::endl;
  EXPECT_LT(ratio_after, ratio_before * 0.8);
  // Every extra worker got rows of the copied experts after the switch.
  for (const auto& [expert, worker] : plan->added) {
    EXPECT_GT(after.worker_rows[static_cast<size_t>(worker)], 0u) << worker;
  }

  ExpectSameOutputs(expected, outputs);
}

// With replicated shards, a dead worker's rows fail over to the other hosts of its experts, the
// balancer's copies included.
TEST(EngineBalancerTest, ExtraCopiesTakeFailedOverRows) {
  auto reference = MakeEngine(kSkewed, 1);
  auto engine = MakeEngine(kSkewed, 2, /*replicas=*/2);
  ASSERT_NE(reference, nullptr);
  ASSERT_NE(engine, nullptr);
  AddRequests(*reference);
  AddRequests(*engine);
  std::map<std::string, Output> expected, outputs;
  while (reference->HasWork()) Collect(reference->Step(), &expected);
  for (int i = 0; i < 4; ++i) Collect(engine->Step(), &outputs);
  auto plan =
      engine->RebalanceExperts(engine->TakeExpertLoad(), 4 * engine->embedded_experts()->ExpertBytes());
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_FALSE(plan->added.empty());
  engine->DisconnectExpertShardForTest(0);  // a home copy of the hot experts
  while (engine->HasWork()) Collect(engine->Step(), &outputs);
  ExpectSameOutputs(expected, outputs);
}

// An expert worker that restarts after a rebalance comes back without its extra copies; the
// placement still sends it rows of them. Its empty answers fail no step: the dispatcher stops using
// its extra copies (its home shard still gets rows) and re-sends the part; outputs keep the bits of
// an unbalanced run.
TEST(EngineBalancerTest, AWorkerThatLostItsExtraCopiesFailsNoStep) {
  auto reference = MakeEngine(kSkewed, 1);
  auto engine = MakeEngine(kSkewed, 4);
  ASSERT_NE(reference, nullptr);
  ASSERT_NE(engine, nullptr);
  AddRequests(*reference);
  AddRequests(*engine);
  std::map<std::string, Output> expected, outputs;
  while (reference->HasWork()) Collect(reference->Step(), &expected);
  for (int i = 0; i < 4; ++i) Collect(engine->Step(), &outputs);
  auto plan =
      engine->RebalanceExperts(engine->TakeExpertLoad(), 4 * engine->embedded_experts()->ExpertBytes());
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_FALSE(plan->added.empty());
  // "Restart" every worker that got copies: it holds its home shard only.
  for (const auto& [expert, worker] : plan->added) {
    ASSERT_TRUE(engine->embedded_experts()->blocks()[static_cast<size_t>(worker)]->SetExtraExperts({}).ok());
  }
  int64_t resends = 0;
  ASSERT_TRUE(engine->HasWork()) << "the loss must happen mid-generation";
  while (engine->HasWork()) {
    Collect(engine->Step(), &outputs);
    resends += engine->last_step_stats().expert_resends;
  }
  EXPECT_GT(resends, 0) << "the lost copies were never asked for";
  ExpectSameOutputs(expected, outputs);
}

TEST(EngineBalancerTest, RejectsBadRebalances) {
  auto engine = MakeEngine(kSkewed, 2);
  ASSERT_NE(engine, nullptr);
  const ExpertLoad load(128, 2);
  auto negative = engine->RebalanceExperts(load, -1);
  EXPECT_EQ(negative.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(negative.status().message(), HasSubstr("budget_bytes"));
  auto short_window = engine->RebalanceExperts(ExpertLoad(3, 2), 1 << 20);
  EXPECT_EQ(short_window.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(short_window.status().message(), HasSubstr("expert_rows"));
  // A placement of other workers is refused; the engine keeps its own.
  std::vector<int32_t> peers{kFirstExpertPeerId, kFirstExpertPeerId + 1, kFirstExpertPeerId + 2};
  EXPECT_EQ(engine->SwitchExpertPlacement(ExpertPlacement(128, peers)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->expert_placement()->num_workers(), 2);
  // No traffic yet: nothing to copy, but a valid (empty) plan.
  auto idle = engine->RebalanceExperts(load, 1 << 20);
  ASSERT_TRUE(idle.ok()) << idle.status();
  EXPECT_TRUE(idle->added.empty());

  auto dense = MakeEngine("dense-tiny", 1);
  ASSERT_NE(dense, nullptr);
  EXPECT_EQ(dense->RebalanceExperts(load, 1 << 20).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace moe::engine
