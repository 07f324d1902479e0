#include "services/router/placement.h"

#include <vector>

#include "gtest/gtest.h"

namespace moe::router {
namespace {

WorkerView View(bool ready, int64_t total, int64_t free, int64_t reserved = 0) {
  return WorkerView{.ready = ready,
                    .num_kv_blocks = total,
                    .num_free_kv_blocks = free,
                    .kv_block_size = 16,
                    .reserved_kv_blocks = reserved};
}

TEST(PlacementTest, BlocksNeededRoundsUp) {
  EXPECT_EQ(KvBlocksNeeded(1, 16), 1);
  EXPECT_EQ(KvBlocksNeeded(16, 16), 1);
  EXPECT_EQ(KvBlocksNeeded(17, 16), 2);
  EXPECT_EQ(KvBlocksNeeded(17, 0), 0);
}

TEST(PlacementTest, PicksReadyWorkerWithMostAvailableBlocks) {
  std::vector<WorkerView> w = {View(true, 100, 10), View(false, 100, 90), View(true, 100, 50),
                               View(true, 100, 60, 20)};
  EXPECT_EQ(PickWorker(w, 32), 2u);  // 50 beats 60-20=40; the not-ready 90 is skipped
}

TEST(PlacementTest, TiesGoToLowestIndex) {
  std::vector<WorkerView> w = {View(true, 100, 30), View(true, 100, 30)};
  EXPECT_EQ(PickWorker(w, 16), 0u);
}

TEST(PlacementTest, NothingWhenNoWorkerHasRoom) {
  std::vector<WorkerView> w = {View(true, 100, 3), View(true, 100, 8, 6)};
  EXPECT_EQ(PickWorker(w, 4 * 16 + 1), std::nullopt);  // needs 5 blocks
  EXPECT_EQ(PickWorker(w, 3 * 16), 0u);
}

TEST(PlacementTest, SequenceOfPlacementsSpreadsLoad) {
  // The deterministic timeline of four 2-block requests on two workers with 5 and 4 free blocks.
  std::vector<WorkerView> w = {View(true, 8, 5), View(true, 8, 4)};
  std::vector<size_t> picks;
  for (int i = 0; i < 5; ++i) {
    std::optional<size_t> p = PickWorker(w, 32);
    if (!p) break;
    picks.push_back(*p);
    w[*p].reserved_kv_blocks += 2;
  }
  EXPECT_EQ(picks, (std::vector<size_t>{0, 1, 0, 1}));  // 5,4 -> 3,4 -> 3,2 -> 1,2 -> 1,0
}

TEST(PlacementTest, FitsSomeWorkerUsesWholeCache) {
  std::vector<WorkerView> w = {View(true, 4, 0), View(false, 100, 100)};
  EXPECT_TRUE(FitsSomeWorker(w, 64));
  EXPECT_FALSE(FitsSomeWorker(w, 65));
}

}  // namespace
}  // namespace moe::router
