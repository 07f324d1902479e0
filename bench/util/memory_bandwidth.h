// Memory bandwidth measured in the same run as a benchmark, for roofline ratios
// (docs/contributing.md#benchmarks).
#ifndef MOE_BENCH_UTIL_MEMORY_BANDWIDTH_H_
#define MOE_BENCH_UTIL_MEMORY_BANDWIDTH_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "common/kernels/cpu/thread_pool.h"

namespace moe::bench {

// Page-aligned storage that is touched (faulted in) at construction.
struct Buffer {
  explicit Buffer(size_t n) : size(n) {
    data = static_cast<uint8_t*>(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096));
    std::memset(data, 1, n);
  }
  ~Buffer() { std::free(data); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  uint8_t* data;
  size_t size;
};

// Splits [0, bytes) into one contiguous chunk per pool thread.
template <typename Fn>
void PerThreadChunks(size_t bytes, Fn fn) {
  kernels::cpu::ThreadPool& pool = kernels::cpu::ThreadPool::Global();
  const int64_t threads = pool.num_threads();
  const size_t chunk = (bytes / threads + 4095) / 4096 * 4096;
  pool.ParallelFor(threads, [&](int64_t t) {
    const size_t begin = std::min(bytes, t * chunk), end = std::min(bytes, begin + chunk);
    if (end > begin) fn(begin, end);
  });
}

struct Bandwidth {
  double copy_gbs;  // (read + write bytes) / s, all pool threads
  double read_gbs;  // read bytes / s (streaming sum), all pool threads
};

// Best of `repeats` passes over two buffers of `bytes` each.
Bandwidth MeasureBandwidth(size_t bytes, int repeats);

}  // namespace moe::bench

#endif  // MOE_BENCH_UTIL_MEMORY_BANDWIDTH_H_
