#include "common/engine/scheduler.h"

#include <vector>

#include "gtest/gtest.h"

namespace moe::engine {
namespace {

struct Planned {
  int64_t id, start, count;
  bool completes;
  bool operator==(const Planned&) const = default;
};

std::vector<Planned> Summarize(const std::vector<PlannedSegment>& plan) {
  std::vector<Planned> out;
  for (const auto& p : plan) out.push_back({p.seq->id, p.start_pos, p.num_tokens, p.completes});
  return out;
}

// Applies a plan as the engine would: computed tokens advance; completing sequences gain a token.
void Apply(const std::vector<PlannedSegment>& plan) {
  for (const auto& p : plan) {
    p.seq->num_computed += p.num_tokens;
    if (p.completes) p.seq->num_tokens += 1;
  }
}

TEST(SchedulerTest, ChunksPrefillUnderTheTokenBudgetAndBatchesDecodes) {
  KvCacheBlockPool pool(100);
  Scheduler scheduler({/*max_num_seqs=*/8, /*max_step_tokens=*/8, /*block_size=*/4}, &pool);
  ScheduledSequence a{0, 10, 0, {}}, b{1, 3, 0, {}};
  scheduler.Enqueue(&a);
  scheduler.Enqueue(&b);
  std::vector<ScheduledSequence*> preempted;

  // Step 1: a's first 8 tokens use the whole budget; b waits.
  auto plan = scheduler.Plan(&preempted);
  EXPECT_EQ(Summarize(plan), (std::vector<Planned>{{0, 0, 8, false}}));
  Apply(plan);
  // Step 2: a's last 2 prompt tokens (then it samples), b's whole prompt of 3.
  plan = scheduler.Plan(&preempted);
  EXPECT_EQ(Summarize(plan), (std::vector<Planned>{{0, 8, 2, true}, {1, 0, 3, true}}));
  Apply(plan);
  // Step 3: both decode one token.
  plan = scheduler.Plan(&preempted);
  EXPECT_EQ(Summarize(plan), (std::vector<Planned>{{0, 10, 1, true}, {1, 3, 1, true}}));
  EXPECT_TRUE(preempted.empty());
  EXPECT_EQ(a.blocks.size(), 3u);  // 11 tokens in blocks of 4
  EXPECT_EQ(b.blocks.size(), 1u);
}

TEST(SchedulerTest, AdmitsInFifoOrderAndRespectsMaxNumSeqs) {
  KvCacheBlockPool pool(100);
  Scheduler scheduler({/*max_num_seqs=*/2, /*max_step_tokens=*/100, /*block_size=*/4}, &pool);
  ScheduledSequence a{0, 2, 0, {}}, b{1, 2, 0, {}}, c{2, 2, 0, {}};
  scheduler.Enqueue(&a);
  scheduler.Enqueue(&b);
  scheduler.Enqueue(&c);
  std::vector<ScheduledSequence*> preempted;
  auto plan = scheduler.Plan(&preempted);
  EXPECT_EQ(Summarize(plan), (std::vector<Planned>{{0, 0, 2, true}, {1, 0, 2, true}}));
  EXPECT_EQ(scheduler.num_waiting(), 1u);
  scheduler.Remove(&a);  // a finishes
  Apply(plan);
  plan = scheduler.Plan(&preempted);
  EXPECT_EQ(Summarize(plan), (std::vector<Planned>{{1, 2, 1, true}, {2, 0, 2, true}}));
}

TEST(SchedulerTest, PreemptsTheNewestSequenceWhenBlocksRunOut) {
  KvCacheBlockPool pool(2);  // 2 blocks of 2 tokens
  Scheduler scheduler({/*max_num_seqs=*/8, /*max_step_tokens=*/100, /*block_size=*/2}, &pool);
  ScheduledSequence a{0, 2, 0, {}}, b{1, 2, 0, {}};
  scheduler.Enqueue(&a);
  scheduler.Enqueue(&b);
  std::vector<ScheduledSequence*> preempted;
  auto plan = scheduler.Plan(&preempted);
  EXPECT_EQ(Summarize(plan), (std::vector<Planned>{{0, 0, 2, true}, {1, 0, 2, true}}));
  Apply(plan);
  EXPECT_EQ(pool.num_free_blocks(), 0);
  // a needs a third block: b (newest) is preempted, its blocks freed, and it waits again.
  plan = scheduler.Plan(&preempted);
  EXPECT_EQ(Summarize(plan), (std::vector<Planned>{{0, 2, 1, true}}));
  ASSERT_EQ(preempted.size(), 1u);
  EXPECT_EQ(preempted[0], &b);
  EXPECT_EQ(b.num_computed, 0);
  EXPECT_TRUE(b.blocks.empty());
  EXPECT_EQ(scheduler.num_waiting(), 1u);
  // When a is done, b is recomputed from scratch (prompt + its generated token).
  Apply(plan);
  scheduler.Remove(&a);
  preempted.clear();
  plan = scheduler.Plan(&preempted);
  EXPECT_EQ(Summarize(plan), (std::vector<Planned>{{1, 0, 3, true}}));
}

TEST(SchedulerTest, WaitsWhenTheQueueHeadDoesNotFit) {
  KvCacheBlockPool pool(2);
  Scheduler scheduler({/*max_num_seqs=*/8, /*max_step_tokens=*/100, /*block_size=*/2}, &pool);
  ScheduledSequence big{0, 4, 0, {}}, small{1, 1, 0, {}}, next{2, 1, 0, {}};
  scheduler.Enqueue(&big);
  std::vector<ScheduledSequence*> preempted;
  auto plan = scheduler.Plan(&preempted);
  ASSERT_EQ(plan.size(), 1u);
  Apply(plan);
  scheduler.Enqueue(&small);
  scheduler.Enqueue(&next);
  // big holds both blocks and needs a third: it preempts itself; small and next cannot fit either.
  plan = scheduler.Plan(&preempted);
  EXPECT_EQ(preempted.size(), 1u);
  // The queue head (big, 5 tokens = 3 blocks) does not fit in 2 blocks: nothing jumps ahead of it.
  EXPECT_TRUE(plan.empty());
  EXPECT_EQ(scheduler.num_waiting(), 3u);
}

}  // namespace
}  // namespace moe::engine
