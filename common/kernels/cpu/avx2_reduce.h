// The AVX2 horizontal reduction shared by the AVX2 GEMM (linear_avx2.cc) and attention
// (attention.cc): eight outputs' 16-lane partial sums reduced in the documented order
// (docs/numerics.md#batch-and-topology-invariance), so both paths add in exactly the same order as
// the portable one.
#ifndef MOE_COMMON_KERNELS_CPU_AVX2_REDUCE_H_
#define MOE_COMMON_KERNELS_CPU_AVX2_REDUCE_H_

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

namespace moe::kernels::cpu::internal {

// Reduce16 of eight outputs whose lanes 0-7 / 8-15 are lo[o] / hi[o], given as s8[o] = lo + hi (the
// (i, i+8) step): then (i, i+4), (i, i+2), (0, 1). Lane l of the result is output kLaneOutput[l].
inline constexpr int kLaneOutput[8] = {0, 2, 4, 6, 1, 3, 5, 7};
__attribute__((target("avx2"))) inline __attribute__((always_inline)) __m256 Reduce8x8(const __m256* s8) {
  __m256 s4[4];
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    const __m256 a = s8[2 * j], b = s8[2 * j + 1];
    s4[j] = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
  }
  const __m256 t0 = _mm256_add_ps(_mm256_shuffle_ps(s4[0], s4[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm256_shuffle_ps(s4[0], s4[1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m256 t1 = _mm256_add_ps(_mm256_shuffle_ps(s4[2], s4[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm256_shuffle_ps(s4[2], s4[3], _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm256_add_ps(_mm256_shuffle_ps(t0, t1, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm256_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 1, 3, 1)));
}

}  // namespace moe::kernels::cpu::internal

#endif  // x86-64 GCC
#endif  // MOE_COMMON_KERNELS_CPU_AVX2_REDUCE_H_
