#include "common/kernels/cpu/thread_pool.h"

#include <atomic>
#include <vector>

#include "gtest/gtest.h"

namespace moe::kernels::cpu {
namespace {

TEST(ThreadPoolTest, RunsEveryTaskOnce) {
  for (int threads : {1, 2, 4}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.num_threads(), threads);
    for (int round = 0; round < 50; ++round) {
      std::vector<std::atomic<int>> hits(1000);
      pool.ParallelFor(1000, [&](int64_t i) { hits[i].fetch_add(1); });
      for (auto& h : hits) ASSERT_EQ(h.load(), 1);
    }
  }
}

TEST(ThreadPoolTest, NestedLoopsRunInline) {
  ThreadPool pool(2);
  std::atomic<int> total{0};
  pool.ParallelFor(8, [&](int64_t) { pool.ParallelFor(8, [&](int64_t) { total.fetch_add(1); }); });
  EXPECT_EQ(total.load(), 64);
}

TEST(ThreadPoolTest, ScopedPoolOverridesCurrent) {
  ThreadPool pool(3);
  EXPECT_EQ(&ThreadPool::Current(), &ThreadPool::Global());
  {
    ScopedThreadPool scoped(&pool);
    EXPECT_EQ(&ThreadPool::Current(), &pool);
  }
  EXPECT_EQ(&ThreadPool::Current(), &ThreadPool::Global());
}

}  // namespace
}  // namespace moe::kernels::cpu
