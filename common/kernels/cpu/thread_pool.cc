#include "common/kernels/cpu/thread_pool.h"

#include <chrono>
#include <cstdlib>
#include <string>

namespace moe::kernels::cpu {
namespace {

thread_local ThreadPool* tls_override_pool = nullptr;
thread_local bool tls_in_task = false;

int DefaultThreadCount() {
  if (const char* env = std::getenv("MOE_NUM_THREADS")) {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && n > 0 && n <= 4096) return static_cast<int>(n);
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

// Polls `done` for up to `spin_us` microseconds; true as soon as it holds.
template <typename Done>
bool PollFor(int64_t spin_us, const Done& done) {
  if (spin_us <= 0) return done();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us);
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    if (std::chrono::steady_clock::now() >= deadline) return done();
  }
}

}  // namespace

int64_t ThreadPool::DefaultSpinMicros() {
  if (const char* env = std::getenv("MOE_POOL_SPIN_US")) {
    char* end = nullptr;
    const long long us = std::strtoll(env, &end, 10);
    if (end != env && *end == '\0' && us >= 0 && us <= 100000) return us;
  }
  return 200;
}

ThreadPool::ThreadPool(int num_threads, int64_t spin_us)
    : num_threads_(num_threads < 1 ? 1 : num_threads), spin_us_(spin_us < 0 ? DefaultSpinMicros() : spin_us) {
  workers_.reserve(num_threads_ - 1);
  for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::RunTasks(const std::function<void(int64_t)>& fn, int64_t num_tasks) {
  const bool was_in_task = tls_in_task;
  tls_in_task = true;
  for (;;) {
    const int64_t i = next_task_.fetch_add(1, std::memory_order_relaxed);
    if (i >= num_tasks) break;
    fn(i);
  }
  tls_in_task = was_in_task;
}

void ThreadPool::WorkerLoop() {
  uint64_t seen = 0;
  const std::function<void(int64_t)>* fn = nullptr;
  int64_t num_tasks = 0;
  for (;;) {
    PollFor(spin_us_, [&] {
      return stop_.load(std::memory_order_relaxed) || generation_.load(std::memory_order_relaxed) != seen;
    });
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      // A worker that wakes after its loop finished sees fn_ == nullptr and skips it; one that
      // registers while fn_ is set is waited for by ParallelFor (active_workers_).
      if (fn_ == nullptr) continue;
      fn = fn_;
      num_tasks = num_tasks_;
      ++active_workers_;
    }
    RunTasks(*fn, num_tasks);
    {
      std::lock_guard<std::mutex> lock(mu_);
      --active_workers_;
    }
    done_cv_.notify_all();
  }
}

void ThreadPool::ParallelFor(int64_t num_tasks, const std::function<void(int64_t)>& fn) {
  if (num_tasks <= 0) return;
  // Inline when there is nothing to share, or when called from inside a task (nesting).
  if (num_threads_ == 1 || num_tasks == 1 || tls_in_task) {
    for (int64_t i = 0; i < num_tasks; ++i) fn(i);
    return;
  }
  std::lock_guard<std::mutex> submit(submit_mu_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    fn_ = &fn;
    num_tasks_ = num_tasks;
    next_task_.store(0, std::memory_order_relaxed);
    ++generation_;
  }
  work_cv_.notify_all();
  RunTasks(fn, num_tasks);
  // Every task has been claimed; wait for workers still running one. A worker that wakes late
  // finds no task left (next_task_ >= num_tasks_) and leaves without touching fn_.
  PollFor(spin_us_, [&] { return active_workers_.load(std::memory_order_relaxed) == 0; });
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [&] { return active_workers_ == 0; });
  fn_ = nullptr;
}

ThreadPool& ThreadPool::Global() {
  static ThreadPool* pool = new ThreadPool(DefaultThreadCount());  // never destroyed: used at exit
  return *pool;
}

ThreadPool& ThreadPool::Current() {
  return tls_override_pool != nullptr ? *tls_override_pool : Global();
}

ScopedThreadPool::ScopedThreadPool(ThreadPool* pool) : previous_(tls_override_pool) {
  tls_override_pool = pool;
}
ScopedThreadPool::~ScopedThreadPool() {
  tls_override_pool = previous_;
}

}  // namespace moe::kernels::cpu
