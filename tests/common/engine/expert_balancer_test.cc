#include "common/engine/expert_balancer.h"

#include <cstdint>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe::engine {
namespace {

using ::testing::HasSubstr;

ExpertPlacement Placement(int64_t num_experts, int64_t workers, int64_t replicas = 1) {
  std::vector<int32_t> peers;
  for (int64_t w = 0; w < workers; ++w) peers.push_back(kFirstExpertPeerId + static_cast<int32_t>(w));
  return ExpertPlacement(num_experts, peers, replicas);
}

// 16 experts on 4 workers (4 each); experts 0 and 1 (both on worker 0) take most of the rows.
std::vector<uint64_t> SkewedRows() {
  std::vector<uint64_t> rows(16, 10);
  rows[0] = 400;
  rows[1] = 300;
  return rows;
}

TEST(ExpertBalancerTest, MaxMeanRatio) {
  EXPECT_DOUBLE_EQ(MaxMeanRatio({}), 1.0);
  EXPECT_DOUBLE_EQ(MaxMeanRatio({0, 0}), 1.0);
  EXPECT_DOUBLE_EQ(MaxMeanRatio({1, 1, 1, 1}), 1.0);
  EXPECT_DOUBLE_EQ(MaxMeanRatio({4, 0, 0, 0}), 4.0);
  EXPECT_DOUBLE_EQ(MaxMeanRatio({3, 1}), 1.5);
}

TEST(ExpertBalancerTest, ReplicatesTheHotExpertsAndLowersTheRatio) {
  const ExpertPlacement base = Placement(16, 4);
  auto plan = PlanExpertReplicas(base, SkewedRows(), /*max_extras_per_worker=*/2);
  ASSERT_TRUE(plan.ok()) << plan.status();
  // Worker 0 holds 720 of 840 rows: ratio 720 / 210.
  EXPECT_NEAR(plan->ratio_before, 720.0 / 210.0, 1e-9);
  EXPECT_LT(plan->ratio_after, 1.3);
  ASSERT_GE(plan->added.size(), 2u);
  EXPECT_EQ(plan->placement.version(), 1u);
  // The hottest expert is copied first, then the next; later copies may even out cooler experts.
  EXPECT_EQ(plan->added[0].first, 0);
  EXPECT_EQ(plan->added[1].first, 1);
  // Within the budget, and never onto a worker holding the expert already.
  std::vector<int64_t> per_worker(4, 0);
  for (const auto& [expert, worker] : plan->added) {
    EXPECT_FALSE(base.home(worker, expert)) << expert << " on " << worker;
    ++per_worker[static_cast<size_t>(worker)];
  }
  for (int64_t n : per_worker) EXPECT_LE(n, 2);
  EXPECT_EQ(plan->placement.num_extras(), static_cast<int64_t>(plan->added.size()));
  // The prediction is the load model applied to the plan's placement.
  EXPECT_DOUBLE_EQ(plan->ratio_after, MaxMeanRatio(ModelWorkerLoads(plan->placement, SkewedRows())));
  // Hosts: the home shard first, then the extras ascending.
  const std::vector<int64_t> hosts = plan->placement.Hosts(0);
  ASSERT_GE(hosts.size(), 2u);
  EXPECT_EQ(hosts[0], 0);
  EXPECT_TRUE(std::is_sorted(hosts.begin() + 1, hosts.end()));
}

TEST(ExpertBalancerTest, IsDeterministic) {
  const ExpertPlacement base = Placement(16, 4);
  auto a = PlanExpertReplicas(base, SkewedRows(), 3);
  auto b = PlanExpertReplicas(base, SkewedRows(), 3);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->added, b->added);
}

TEST(ExpertBalancerTest, RespectsTheBudget) {
  const ExpertPlacement base = Placement(16, 4);
  auto none = PlanExpertReplicas(base, SkewedRows(), 0);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->added.empty());
  EXPECT_FALSE(none->placement.has_extras());
  EXPECT_DOUBLE_EQ(none->ratio_after, none->ratio_before);
  auto one = PlanExpertReplicas(base, SkewedRows(), 1);
  ASSERT_TRUE(one.ok());
  EXPECT_LE(one->added.size(), 3u);  // three other workers, one slot each
  auto more = PlanExpertReplicas(base, SkewedRows(), 4);
  ASSERT_TRUE(more.ok());
  EXPECT_LE(more->ratio_after, one->ratio_after);
  EXPECT_LT(one->ratio_after, one->ratio_before);
}

TEST(ExpertBalancerTest, BalancedLoadAddsNothing) {
  const ExpertPlacement base = Placement(16, 4);
  auto plan = PlanExpertReplicas(base, std::vector<uint64_t>(16, 50), 4);
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(plan->added.empty());
  EXPECT_DOUBLE_EQ(plan->ratio_after, 1.0);
  // No traffic at all: nothing to balance.
  auto idle = PlanExpertReplicas(base, std::vector<uint64_t>(16, 0), 4);
  ASSERT_TRUE(idle.ok());
  EXPECT_TRUE(idle->added.empty());
}

TEST(ExpertBalancerTest, WorksWithReplicatedShards) {
  // 2 shards x 2 replicas: workers 0 and 2 hold shard 0.
  const ExpertPlacement base = Placement(16, 4, 2);
  auto plan = PlanExpertReplicas(base, SkewedRows(), 2);
  ASSERT_TRUE(plan.ok());
  EXPECT_LT(plan->ratio_after, plan->ratio_before);
  for (const auto& [expert, worker] : plan->added) {
    if (expert < 8) {
      EXPECT_TRUE(worker == 1 || worker == 3) << expert << " on " << worker;
    }
  }
}

TEST(ExpertBalancerTest, ReplansFromTheHomeShards) {
  const ExpertPlacement base = Placement(16, 4);
  auto first = PlanExpertReplicas(base, SkewedRows(), 2);
  ASSERT_TRUE(first.ok());
  // The hot experts move: the next plan drops the old copies and adds new ones.
  std::vector<uint64_t> rows(16, 10);
  rows[15] = 500;
  auto second = PlanExpertReplicas(first->placement, rows, 2);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->placement.version(), 2u);
  EXPECT_EQ(second->added[0].first, 15);
  // The first plan's copies are not kept: the ratio before is that of the home shards alone.
  EXPECT_DOUBLE_EQ(second->ratio_before, MaxMeanRatio(ModelWorkerLoads(base, rows)));
  EXPECT_LT(second->ratio_after, second->ratio_before);
}

TEST(ExpertBalancerTest, RejectsBadArguments) {
  const ExpertPlacement base = Placement(16, 4);
  auto wrong_size = PlanExpertReplicas(base, std::vector<uint64_t>(15, 1), 1);
  EXPECT_EQ(wrong_size.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong_size.status().message(), HasSubstr("expert_rows"));
  auto negative = PlanExpertReplicas(base, SkewedRows(), -1);
  EXPECT_EQ(negative.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(negative.status().message(), HasSubstr("max_extras_per_worker"));
}

// A cluster's constraints (moectl cluster rebalance): workers that do not answer get neither rows
// nor copies, each worker has its own budget, and a joined worker's own shard is kept at no cost.
TEST(ExpertBalancerTest, LeavesUnavailableWorkersOut) {
  // 2 shards x 2 replicas: workers 0 and 2 hold shard 0 (experts 0..7), 1 and 3 shard 1.
  const ExpertPlacement base = Placement(16, 4, 2);
  BalanceConstraints constraints;
  constraints.available = {true, true, true, false};
  constraints.max_extras_per_worker = 2;
  auto plan = PlanExpertReplicas(base, SkewedRows(), constraints);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_FALSE(plan->added.empty());
  for (const auto& [expert, worker] : plan->added) EXPECT_NE(worker, 3) << "expert " << expert;
  EXPECT_TRUE(plan->placement.extra_experts(3).empty());
  // Shard 1's rows all go to worker 1 now: shard 0 (760 rows) halves on 0 and 2, 80 on 1.
  EXPECT_NEAR(plan->ratio_before, 380.0 / (840.0 / 3.0), 1e-9);
  EXPECT_LT(plan->ratio_after, plan->ratio_before);
  // The prediction is the load model with only the available workers taking rows.
  const std::vector<double> loads = ModelWorkerLoads(plan->placement, SkewedRows(), constraints.available);
  EXPECT_DOUBLE_EQ(loads[3], 0.0);
  EXPECT_DOUBLE_EQ(plan->ratio_after, MaxMeanRatio({loads[0], loads[1], loads[2]}));
}

TEST(ExpertBalancerTest, RefusesAnExpertWithNoAvailableHost) {
  const ExpertPlacement base = Placement(16, 4);
  BalanceConstraints constraints;
  constraints.available = {true, false, true, true};
  constraints.max_extras_per_worker = 2;
  auto plan = PlanExpertReplicas(base, SkewedRows(), constraints);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(plan.status().message(), HasSubstr("expert 4: no available worker hosts it"));
}

TEST(ExpertBalancerTest, GivesEachWorkerItsOwnBudget) {
  const ExpertPlacement base = Placement(16, 4);
  BalanceConstraints constraints;
  constraints.max_extras = {0, 3, 0, 0};
  auto plan = PlanExpertReplicas(base, SkewedRows(), constraints);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_FALSE(plan->added.empty());
  EXPECT_LE(plan->added.size(), 3u);
  for (const auto& [expert, worker] : plan->added) EXPECT_EQ(worker, 1) << "expert " << expert;
  constraints.max_extras = {0, -1, 0, 0};
  EXPECT_THAT(PlanExpertReplicas(base, SkewedRows(), constraints).status().message(),
              HasSubstr("max_extras[1]"));
  constraints.max_extras = {1, 1};
  EXPECT_THAT(PlanExpertReplicas(base, SkewedRows(), constraints).status().message(),
              HasSubstr("max_extras: 2 entries for 4 workers"));
}

TEST(ExpertBalancerTest, KeepsAJoinedWorkersShardFreeOfBudget) {
  // 2 home workers (shards of 8) and joinable worker 2 holding shard 0 (2 mod 2) as copies.
  auto base = Placement(16, 2).WithJoinableWorkers({kFirstExpertPeerId + 2, kFirstExpertPeerId + 3});
  ASSERT_TRUE(base.ok()) << base.status();
  BalanceConstraints constraints;
  constraints.available = {true, true, true, false};  // joinable worker 3 is not running
  constraints.max_extras = {1, 1, 0, 1};
  for (int64_t e = 0; e < 8; ++e) constraints.fixed.emplace_back(e, 2);
  auto plan = PlanExpertReplicas(*base, SkewedRows(), constraints);
  ASSERT_TRUE(plan.ok()) << plan.status();
  // The joined worker holds shard 0's experts in every plan and is given nothing else.
  for (int64_t e = 0; e < 8; ++e) EXPECT_THAT(plan->placement.extra_workers(e), ::testing::Contains(2));
  EXPECT_EQ(plan->placement.extra_experts(2).size(), 8u);
  EXPECT_TRUE(plan->placement.extra_experts(3).empty());
  for (const auto& [expert, worker] : plan->added) {
    EXPECT_NE(worker, 2);
    EXPECT_NE(worker, 3);
  }
  // Before: shard 0 (760 rows) split over workers 0 and 2, shard 1 (80) on worker 1.
  EXPECT_NEAR(plan->ratio_before, 380.0 / (840.0 / 3.0), 1e-9);
  // A fixed copy on an unavailable worker, or on a home expert, is refused.
  constraints.fixed.emplace_back(0, 3);
  EXPECT_THAT(PlanExpertReplicas(*base, SkewedRows(), constraints).status().message(),
              HasSubstr("worker 3 is not available"));
  constraints.fixed.back() = {0, 0};
  EXPECT_THAT(PlanExpertReplicas(*base, SkewedRows(), constraints).status().message(),
              HasSubstr("worker 0 already holds expert 0"));
}

TEST(ExpertPlacementTest, WithExtrasValidatesEveryList) {
  const ExpertPlacement base = Placement(8, 2);  // worker 0: [0, 4), worker 1: [4, 8)
  std::vector<std::vector<int64_t>> extras(8);
  extras[0] = {1};
  auto ok = base.WithExtras(extras, 3);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->version(), 3u);
  EXPECT_EQ(ok->extra_experts(1), std::vector<int64_t>({0}));
  EXPECT_EQ(ok->Hosts(0), std::vector<int64_t>({0, 1}));
  EXPECT_EQ(ok->Hosts(5), std::vector<int64_t>({1}));

  extras[0] = {0};  // its home worker
  EXPECT_THAT(base.WithExtras(extras, 1).status().message(), HasSubstr("extras[0]: worker 0 already holds"));
  extras[0] = {2};
  EXPECT_THAT(base.WithExtras(extras, 1).status().message(),
              HasSubstr("extras[0]: worker 2 is not in [0, 2)"));
  extras[0] = {};
  extras[4] = {0, 0};
  EXPECT_THAT(base.WithExtras(extras, 1).status().message(),
              HasSubstr("extras[4]: workers must be ascending"));
  EXPECT_THAT(base.WithExtras(std::vector<std::vector<int64_t>>(3), 1).status().message(),
              HasSubstr("extras: 3 expert lists for 8 experts"));
}

}  // namespace
}  // namespace moe::engine
