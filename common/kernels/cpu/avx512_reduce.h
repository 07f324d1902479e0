// The AVX-512 horizontal reduction shared by the bf16 GEMM (linear_avx512.cc) and the FP8 GEMM
// (linear_fp8_avx512.cc): sixteen outputs' 16-lane partial sums reduced at once, each in the
// documented order (linear_internal.h, Reduce16), so the vector paths add exactly as the portable
// one does. Also the vector twin of FloatToBF16.
#ifndef MOE_COMMON_KERNELS_CPU_AVX512_REDUCE_H_
#define MOE_COMMON_KERNELS_CPU_AVX512_REDUCE_H_

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define MOE_AVX512_REDUCE_INLINE \
  __attribute__((target("avx512f,avx512bw"))) inline __attribute__((always_inline))

namespace moe::kernels::cpu::internal {

// Lane l of the result is Reduce16(v[l]) with Reduce16's tree: (i, i+8), (i, i+4), (i, i+2),
// (0, 1). The inputs are taken in the order u[a] = v[4 * (a % 4) + a / 4], the transpose that the
// shuffle network below undoes.
MOE_AVX512_REDUCE_INLINE __m512 Reduce16x16(const __m512* v) {
  __m512 s8[8], s4[4], s2[2];
#pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) {
    const __m512 a = v[4 * ((2 * j) % 4) + (2 * j) / 4];
    const __m512 b = v[4 * ((2 * j + 1) % 4) + (2 * j + 1) / 4];
    s8[j] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xee));
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    const __m512 a = s8[2 * j], b = s8[2 * j + 1];
    s4[j] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xdd));
  }
#pragma GCC unroll 2
  for (int j = 0; j < 2; ++j) {
    const __m512d a = _mm512_castps_pd(s4[2 * j]), b = _mm512_castps_pd(s4[2 * j + 1]);
    s2[j] =
        _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(s2[0], s2[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(s2[0], s2[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// FloatToBF16 (common/tensor/bf16.h) of 16 floats, bit for bit: round to nearest even, and a NaN
// keeps its high half with the quiet bit set. VCVTNEPS2BF16 is not used: it flushes subnormals.
MOE_AVX512_REDUCE_INLINE __m256i FloatToBF16x16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded =
      _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet));
}

}  // namespace moe::kernels::cpu::internal

#undef MOE_AVX512_REDUCE_INLINE
#endif  // x86-64 GCC/Clang

#endif  // MOE_COMMON_KERNELS_CPU_AVX512_REDUCE_H_
