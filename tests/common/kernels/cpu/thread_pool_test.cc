#include "common/kernels/cpu/thread_pool.h"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
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

// Workers that poll between loops (and a caller that polls for their last tasks) run every task
// once too: loops back to back (a worker catches the next one while polling), loops after a pause
// longer than the poll (it went to sleep and is woken), and a pool destroyed while its workers poll.
TEST(ThreadPoolTest, RunsEveryTaskOnceWhetherThreadsPollOrSleepBetweenLoops) {
  for (int64_t spin_us : {0, 300, 100000}) {
    SCOPED_TRACE(spin_us);
    ThreadPool pool(3, spin_us);
    for (int round = 0; round < 40; ++round) {
      std::vector<std::atomic<int>> hits(64);
      pool.ParallelFor(64, [&](int64_t i) { hits[i].fetch_add(1); });
      for (auto& h : hits) ASSERT_EQ(h.load(), 1);
      if (round % 10 == 9) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
}

TEST(ThreadPoolTest, SpinComesFromTheEnvironmentWhenValid) {
  const char* saved = std::getenv("MOE_POOL_SPIN_US");
  const std::string restore = saved == nullptr ? "" : saved;
  setenv("MOE_POOL_SPIN_US", "0", 1);
  EXPECT_EQ(ThreadPool::DefaultSpinMicros(), 0);
  setenv("MOE_POOL_SPIN_US", "1500", 1);
  EXPECT_EQ(ThreadPool::DefaultSpinMicros(), 1500);
  for (const char* bad : {"", "abc", "-1", "100001", "10us"}) {
    setenv("MOE_POOL_SPIN_US", bad, 1);
    EXPECT_EQ(ThreadPool::DefaultSpinMicros(), 200) << bad;
  }
  if (saved == nullptr) {
    unsetenv("MOE_POOL_SPIN_US");
  } else {
    setenv("MOE_POOL_SPIN_US", restore.c_str(), 1);
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
