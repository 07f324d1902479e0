// A fixed-size pool of worker threads that runs data-parallel loops for the CPU kernels.
#ifndef MOE_COMMON_KERNELS_CPU_THREAD_POOL_H_
#define MOE_COMMON_KERNELS_CPU_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"

namespace moe::kernels::cpu {

// Runs ParallelFor loops on `num_threads` threads (the caller plus num_threads - 1 workers).
// Tasks are handed out dynamically, so which thread runs a task is not fixed: kernels must make
// each task's result independent of the thread that runs it (they do: a task owns its outputs).
//
// Thread safety: ParallelFor may be called from any thread; concurrent calls from different
// threads are serialized (one loop runs at a time). A ParallelFor issued from inside a task runs
// inline on the calling thread, so nesting never deadlocks.
class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Calls fn(i) once for every i in [0, num_tasks) and returns when all calls have returned.
  void ParallelFor(int64_t num_tasks, const std::function<void(int64_t)>& fn);

  // The process-wide pool: hardware threads, or MOE_NUM_THREADS if set to a positive integer.
  static ThreadPool& Global();
  // The pool kernels use on this thread: the innermost ScopedThreadPool, else Global().
  static ThreadPool& Current();

 private:
  void WorkerLoop();
  void RunTasks(const std::function<void(int64_t)>& fn, int64_t num_tasks);

  const int num_threads_;
  std::vector<std::thread> workers_;
  std::mutex submit_mu_;  // serializes ParallelFor calls from different threads

  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int active_workers_ ABSL_GUARDED_BY(mu_) = 0;

  // The current loop (nullptr between loops).
  const std::function<void(int64_t)>* fn_ ABSL_GUARDED_BY(mu_) = nullptr;
  int64_t num_tasks_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<int64_t> next_task_{0};
};

// Makes kernels on this thread use `pool` instead of the global one while in scope (tests use
// this to check that results do not depend on the thread count).
class ScopedThreadPool {
 public:
  explicit ScopedThreadPool(ThreadPool* pool);
  ~ScopedThreadPool();
  ScopedThreadPool(const ScopedThreadPool&) = delete;
  ScopedThreadPool& operator=(const ScopedThreadPool&) = delete;

 private:
  ThreadPool* previous_;
};

}  // namespace moe::kernels::cpu

#endif  // MOE_COMMON_KERNELS_CPU_THREAD_POOL_H_
