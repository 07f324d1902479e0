#include "common/engine/kv_cache_block_pool.h"

#include <cstdint>
#include <limits>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

TEST(KvCacheBlockPoolTest, StartsWithEveryBlockFree) {
  KvCacheBlockPool pool(8);
  EXPECT_EQ(pool.num_blocks(), 8);
  EXPECT_EQ(pool.num_free_blocks(), 8);
}

TEST(KvCacheBlockPoolTest, NegativeSizeGivesEmptyPool) {
  KvCacheBlockPool pool(-3);
  EXPECT_EQ(pool.num_blocks(), 0);
  EXPECT_EQ(pool.num_free_blocks(), 0);
  EXPECT_TRUE(pool.CanAllocate(0));
  EXPECT_FALSE(pool.CanAllocate(1));
}

TEST(KvCacheBlockPoolTest, AllocatesLowestIdsFirstAndAppends) {
  KvCacheBlockPool pool(8);
  std::vector<int32_t> blocks = {99};
  ASSERT_TRUE(pool.Allocate(3, &blocks).ok());
  EXPECT_THAT(blocks, ElementsAre(99, 0, 1, 2));
  ASSERT_TRUE(pool.Allocate(2, &blocks).ok());
  EXPECT_THAT(blocks, ElementsAre(99, 0, 1, 2, 3, 4));
  EXPECT_EQ(pool.num_free_blocks(), 3);
}

TEST(KvCacheBlockPoolTest, FreedBlocksAreReusedLowestFirst) {
  KvCacheBlockPool pool(6);
  std::vector<int32_t> a, b;
  ASSERT_TRUE(pool.Allocate(4, &a).ok());  // 0 1 2 3
  ASSERT_TRUE(pool.Free({3, 1}).ok());
  EXPECT_EQ(pool.num_free_blocks(), 4);
  ASSERT_TRUE(pool.Allocate(3, &b).ok());
  EXPECT_THAT(b, ElementsAre(1, 3, 4));
  EXPECT_EQ(pool.num_free_blocks(), 1);
}

TEST(KvCacheBlockPoolTest, ExhaustionIsResourceExhaustedAndAllocatesNothing) {
  KvCacheBlockPool pool(4);
  std::vector<int32_t> held;
  ASSERT_TRUE(pool.Allocate(3, &held).ok());
  EXPECT_FALSE(pool.CanAllocate(2));
  std::vector<int32_t> blocks = {7};
  const absl::Status status = pool.Allocate(2, &blocks);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(status.message(), HasSubstr("2 blocks requested, 1 of 4 free"));
  EXPECT_THAT(blocks, ElementsAre(7));
  EXPECT_EQ(pool.num_free_blocks(), 1);
  // The remaining block is still allocatable after the failed attempt.
  ASSERT_TRUE(pool.Allocate(1, &blocks).ok());
  EXPECT_THAT(blocks, ElementsAre(7, 3));
}

TEST(KvCacheBlockPoolTest, ZeroCountIsANoOp) {
  KvCacheBlockPool pool(2);
  std::vector<int32_t> blocks;
  ASSERT_TRUE(pool.Allocate(0, &blocks).ok());
  EXPECT_THAT(blocks, IsEmpty());
  EXPECT_EQ(pool.num_free_blocks(), 2);
}

TEST(KvCacheBlockPoolTest, RejectsNegativeCountAndNullOutput) {
  KvCacheBlockPool pool(2);
  std::vector<int32_t> blocks;
  EXPECT_FALSE(pool.CanAllocate(-1));
  EXPECT_EQ(pool.Allocate(-1, &blocks).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pool.Allocate(1, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pool.num_free_blocks(), 2);
}

TEST(KvCacheBlockPoolTest, DoubleFreeIsInternalAndFreesNothing) {
  KvCacheBlockPool pool(4);
  std::vector<int32_t> blocks;
  ASSERT_TRUE(pool.Allocate(3, &blocks).ok());  // 0 1 2
  ASSERT_TRUE(pool.Free({1}).ok());
  const absl::Status status = pool.Free({0, 1});
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(status.message(), HasSubstr("double free of block 1"));
  EXPECT_EQ(pool.num_free_blocks(), 2);  // block 0 is still allocated
  ASSERT_TRUE(pool.Free({0}).ok());
  EXPECT_EQ(pool.num_free_blocks(), 3);
}

TEST(KvCacheBlockPoolTest, RepeatedIdInOneFreeIsADoubleFree) {
  KvCacheBlockPool pool(4);
  std::vector<int32_t> blocks;
  ASSERT_TRUE(pool.Allocate(2, &blocks).ok());
  EXPECT_EQ(pool.Free({1, 0, 1}).code(), absl::StatusCode::kInternal);
  EXPECT_EQ(pool.num_free_blocks(), 2);
}

TEST(KvCacheBlockPoolTest, OutOfRangeFreeIsInternalAndFreesNothing) {
  KvCacheBlockPool pool(4);
  std::vector<int32_t> blocks;
  ASSERT_TRUE(pool.Allocate(4, &blocks).ok());
  const absl::Status high = pool.Free({0, 4});
  EXPECT_EQ(high.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(high.message(), HasSubstr("block 4 outside [0, 4)"));
  EXPECT_EQ(pool.Free({-1}).code(), absl::StatusCode::kInternal);
  EXPECT_EQ(pool.num_free_blocks(), 0);
}

TEST(KvCacheBlockPoolTest, FreeingEverythingRestoresAllBlocks) {
  KvCacheBlockPool pool(5);
  std::vector<int32_t> blocks;
  ASSERT_TRUE(pool.Allocate(5, &blocks).ok());
  ASSERT_TRUE(pool.Free(blocks).ok());
  EXPECT_EQ(pool.num_free_blocks(), 5);
  std::vector<int32_t> again;
  ASSERT_TRUE(pool.Allocate(5, &again).ok());
  EXPECT_THAT(again, ElementsAre(0, 1, 2, 3, 4));
}

TEST(KvCacheBlockPoolTest, BlocksForRoundsUp) {
  EXPECT_EQ(KvCacheBlockPool::BlocksFor(0, 16), 0);
  EXPECT_EQ(KvCacheBlockPool::BlocksFor(-5, 16), 0);
  EXPECT_EQ(KvCacheBlockPool::BlocksFor(1, 16), 1);
  EXPECT_EQ(KvCacheBlockPool::BlocksFor(16, 16), 1);
  EXPECT_EQ(KvCacheBlockPool::BlocksFor(17, 16), 2);
  EXPECT_EQ(KvCacheBlockPool::BlocksFor(32, 16), 2);
  EXPECT_EQ(KvCacheBlockPool::BlocksFor(33, 1), 33);
}

TEST(KvCacheBlockPoolTest, BlocksForSaturatesAndRejectsBadBlockSize) {
  EXPECT_EQ(KvCacheBlockPool::BlocksFor(std::numeric_limits<int64_t>::max(), 1),
            std::numeric_limits<int32_t>::max());
  EXPECT_EQ(KvCacheBlockPool::BlocksFor(std::numeric_limits<int64_t>::max(), 16),
            std::numeric_limits<int32_t>::max());
  EXPECT_EQ(KvCacheBlockPool::BlocksFor(10, 0), -1);
  EXPECT_EQ(KvCacheBlockPool::BlocksFor(10, -16), -1);
  KvCacheBlockPool pool(4);
  EXPECT_FALSE(pool.CanAllocate(KvCacheBlockPool::BlocksFor(10, 0)));
}

}  // namespace
}  // namespace moe::engine
