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
// Between loops a worker polls for the next one for `spin_us` microseconds before it sleeps on a
// condition variable, and the caller polls for the workers' last tasks before it sleeps: a decode
// step is hundreds of loops of tens of microseconds each, and waking a sleeping thread costs about
// as much as one loop (on a VM, an inter-processor interrupt through the hypervisor), so without
// the polling a small loop ran mostly on the caller alone.
// Tasks are handed out dynamically, so which thread runs a task is not fixed: kernels must make
// each task's result independent of the thread that runs it (they do: a task owns its outputs).
//
// Thread safety: ParallelFor may be called from any thread; concurrent calls from different
// threads are serialized (one loop runs at a time). A ParallelFor issued from inside a task runs
// inline on the calling thread, so nesting never deadlocks.
class ThreadPool {
 public:
  // spin_us < 0: DefaultSpinMicros().
  explicit ThreadPool(int num_threads, int64_t spin_us = -1);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Calls fn(i) once for every i in [0, num_tasks) and returns when all calls have returned.
  void ParallelFor(int64_t num_tasks, const std::function<void(int64_t)>& fn);

  // The process-wide pool: hardware threads, or MOE_NUM_THREADS if set to a positive integer.
  static ThreadPool& Global();
  // How long threads poll between loops: MOE_POOL_SPIN_US if set to an integer in [0, 100000],
  // else 200 (0: never poll, sleep at once).
  static int64_t DefaultSpinMicros();
  // The pool kernels use on this thread: the innermost ScopedThreadPool, else Global().
  static ThreadPool& Current();

 private:
  void WorkerLoop();
  void RunTasks(const std::function<void(int64_t)>& fn, int64_t num_tasks);

  const int num_threads_;
  const int64_t spin_us_;
  std::vector<std::thread> workers_;
  std::mutex submit_mu_;  // serializes ParallelFor calls from different threads

  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  // Written under mu_; atomic so that the polling reads them without it (a poll that sees a change
  // takes mu_ and checks again).
  std::atomic<uint64_t> generation_ = 0;
  std::atomic<bool> stop_ = false;
  std::atomic<int> active_workers_ = 0;

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
