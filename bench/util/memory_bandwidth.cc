#include "bench/util/memory_bandwidth.h"

#include <chrono>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
// GCC 12's AVX-512 headers trip -Wuninitialized on their own reduce/extract helpers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace moe::bench {
namespace {

using Clock = std::chrono::steady_clock;
using kernels::cpu::ThreadPool;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f"))) float SumAvx512(const float* p, size_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
    a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
  }
  float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  for (; i < n; ++i) s += p[i];
  return s;
}
#endif

float SumPortable(const float* p, size_t n) {
  float lane[16] = {};
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) lane[j] += p[i + j];
  float s = 0;
  for (float v : lane) s += v;
  for (; i < n; ++i) s += p[i];
  return s;
}

float Sum(const float* p, size_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (__builtin_cpu_supports("avx512f")) return SumAvx512(p, n);
#endif
  return SumPortable(p, n);
}

}  // namespace

Bandwidth MeasureBandwidth(size_t bytes, int repeats) {
  Buffer src(bytes), dst(bytes);
  double best_copy = 1e30, best_read = 1e30;
  volatile float sink = 0;
  for (int r = 0; r < repeats; ++r) {
    auto t0 = Clock::now();
    PerThreadChunks(bytes, [&](size_t b, size_t e) { std::memcpy(dst.data + b, src.data + b, e - b); });
    auto t1 = Clock::now();
    std::vector<float> partial(ThreadPool::Global().num_threads(), 0.0f);
    PerThreadChunks(bytes, [&](size_t b, size_t e) {
      const float s = Sum(reinterpret_cast<const float*>(src.data + b), (e - b) / sizeof(float));
      partial[b / ((bytes / partial.size() + 4095) / 4096 * 4096)] = s;
    });
    auto t2 = Clock::now();
    for (float s : partial) sink = sink + s;
    best_copy = std::min(best_copy, Seconds(t0, t1));
    best_read = std::min(best_read, Seconds(t1, t2));
  }
  return {2.0 * bytes / best_copy / 1e9, bytes / best_read / 1e9};
}

}  // namespace moe::bench
