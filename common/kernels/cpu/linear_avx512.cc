// AVX-512 (F/BW/VL/DQ + BF16) micro-kernels for Linear with bf16 weights (FP8 weights:
// linear_fp8_avx512.cc). Compiled without global -m flags: every
// function here carries a target attribute and is only called after ActiveIsa() confirmed the
// CPU supports it. The reduction order is the one documented in linear_internal.h.
#include <algorithm>
#include <cstring>

#include "common/kernels/cpu/avx512_reduce.h"
#include "common/kernels/cpu/linear_internal.h"
#include "common/tensor/linear_weight.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

// GCC 12's AVX-512 headers trip -Wuninitialized on their own setzero/extract helpers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define MOE_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

namespace moe::kernels::cpu::internal {
namespace {

// MR rows x NR columns (MR, NR <= 4), full k. Each accumulator sees the same instruction sequence
// whatever MR and NR are, so the tile shape never changes a result. The tile's accumulators are
// folded together by one 16-way reduction (Reduce16x16, each lane in Reduce16's order) and rounded
// to bf16 together: per output that is a few instructions instead of a whole horizontal sum, which
// matters most for short rows (k = 768 for the experts' down projections).
//
// `next` (null for none) is the weight block the caller reads after this one (same k): each chunk
// step at a k in [pf_begin, pf_end) prefetches into L2 the matching cache line of each of its NR
// rows, so that block's reads are under way while this one computes. The caller gives each row
// quad of a row block its own slice of k (LinearBf16TaskAvx512).
template <int MR, int NR>
MOE_AVX512_TARGET void MicroBf16(const bf16* x, int64_t x_stride, const bf16* w, int64_t k, bf16* y,
                                 int64_t y_stride, const bf16* next, int64_t pf_begin, int64_t pf_end) {
  __m512 acc[MR][NR];
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 32 <= k; c += 32) {
    if (next != nullptr && c >= pf_begin && c < pf_end) {
#pragma GCC unroll 4
      for (int n = 0; n < NR; ++n) _mm_prefetch(reinterpret_cast<const char*>(next + n * k + c), _MM_HINT_T1);
    }
    __m512i wv[NR];
#pragma GCC unroll 4
    for (int n = 0; n < NR; ++n) wv[n] = _mm512_loadu_si512(w + n * k + c);
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
      const __m512i xv = _mm512_loadu_si512(x + m * x_stride + c);
#pragma GCC unroll 4
      for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_dpbf16_ps(acc[m][n], (__m512bh)xv, (__m512bh)wv[n]);
    }
  }
  if (c < k) {
    const __mmask32 mask = static_cast<__mmask32>((1ull << (k - c)) - 1);
    __m512i wv[NR];
#pragma GCC unroll 4
    for (int n = 0; n < NR; ++n) wv[n] = _mm512_maskz_loadu_epi16(mask, w + n * k + c);
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
      const __m512i xv = _mm512_maskz_loadu_epi16(mask, x + m * x_stride + c);
#pragma GCC unroll 4
      for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_dpbf16_ps(acc[m][n], (__m512bh)xv, (__m512bh)wv[n]);
    }
  }
  // Lane 4m + n of the fold is output (m, n); unused lanes reduce zeros.
  __m512 fold[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) fold[i] = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int n = 0; n < NR; ++n) fold[4 * m + n] = acc[m][n];
  alignas(32) bf16 out[16];
  _mm256_store_si256(reinterpret_cast<__m256i*>(out), FloatToBF16x16(Reduce16x16(fold)));
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m) std::memcpy(y + m * y_stride, out + 4 * m, NR * sizeof(bf16));
}

// MR activation rows (1..kStreamRows) against 16 consecutive weight rows taken one at a time, so
// the weights are read in memory order; MicroBf16's 4 weight rows at a time, 1.5-8 KiB apart, gave
// a GEMV 0.57-0.80x this kernel's bandwidth (see kStreamRows). Each weight row's MR sums wait in
// `sums` and the 16 of each activation row are folded at the end; every accumulator sees the same
// instruction sequence as in MicroBf16, so the result is the same.
template <int MR>
MOE_AVX512_TARGET void MicroBf16Stream(const bf16* x, int64_t x_stride, const bf16* w, int64_t k, bf16* y,
                                       int64_t y_stride) {
  __m512 sums[MR][16];
  const int64_t full = k / 32 * 32;
  const __mmask32 mask = static_cast<__mmask32>((1ull << (k - full)) - 1);
  for (int j = 0; j < 16; ++j) {
    const bf16* wj = w + j * k;
    __m512 acc[MR];
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) acc[m] = _mm512_setzero_ps();
    for (int64_t c = 0; c < full; c += 32) {
      const __m512i wv = _mm512_loadu_si512(wj + c);
#pragma GCC unroll 4
      for (int m = 0; m < MR; ++m) {
        acc[m] = _mm512_dpbf16_ps(acc[m], (__m512bh)_mm512_loadu_si512(x + m * x_stride + c), (__m512bh)wv);
      }
    }
    if (full < k) {
      const __m512i wv = _mm512_maskz_loadu_epi16(mask, wj + full);
#pragma GCC unroll 4
      for (int m = 0; m < MR; ++m) {
        acc[m] = _mm512_dpbf16_ps(acc[m], (__m512bh)_mm512_maskz_loadu_epi16(mask, x + m * x_stride + full),
                                  (__m512bh)wv);
      }
    }
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) sums[m][j] = acc[m];
  }
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + m * y_stride), FloatToBF16x16(Reduce16x16(sums[m])));
  }
}

// Up to this many rows a task streams its weights (MicroBf16Stream); from 4 rows on, the tile
// kernel's reuse of each activation load wins (same-process A/B on Zen 4, 40 interleaved rounds:
// 1.26-1.74x the tile kernel's bandwidth at 1 row over q/kv/expert/down/lm_head shapes, 1.28-1.49x
// at 2, 1.02-1.41x at 3, 0.79-0.86x at 4 except k = 768).
constexpr int64_t kStreamRows = 3;
using Bf16Stream = void (*)(const bf16*, int64_t, const bf16*, int64_t, bf16*, int64_t);
constexpr Bf16Stream kBf16Stream[kStreamRows] = {MicroBf16Stream<1>, MicroBf16Stream<2>, MicroBf16Stream<3>};

using Bf16Micro = void (*)(const bf16*, int64_t, const bf16*, int64_t, bf16*, int64_t, const bf16*, int64_t,
                           int64_t);

template <int MR>
constexpr Bf16Micro kBf16Row[4] = {MicroBf16<MR, 1>, MicroBf16<MR, 2>, MicroBf16<MR, 3>, MicroBf16<MR, 4>};
constexpr const Bf16Micro* kBf16Table[4] = {kBf16Row<1>, kBf16Row<2>, kBf16Row<3>, kBf16Row<4>};
}  // namespace

// Loop order: a block of rows, then 4 weight rows (kept in L1 while every row quad of the block
// passes over them), then 4 activation rows. Weights are read from memory once per row block.
// While the row quads pass over 4 weight rows, the next 4 are prefetched into L2, each quad taking
// an equal slice of k, so the fetch is spread over the whole time the block computes on the current
// rows. It replaced prefetching all of the next rows into L1 during the first quad's pass, which
// crowded that quad and L1: same-process A/B on Zen 4 (2 threads, 5-15 interleaved rounds, medians)
// gave 1.03-1.45x over the q/o/expert/lm_head shapes at 4 to 512 rows (1.10-1.45x at 4-16 rows,
// 1.08-1.20x at 32, 1.03-1.07x at 128-512), with the same bits.
void LinearBf16TaskAvx512(const Bf16Task& t, int64_t n0, int64_t n1) {
  if (t.num_rows <= kStreamRows) {  // a GEMV or nearly: weights in memory order
    int64_t n = n0;
    for (; n + 16 <= n1; n += 16) {
      kBf16Stream[t.num_rows - 1](t.x, t.x_stride, t.w + n * t.k, t.k, t.y + n, t.y_stride);
    }
    for (; n < n1; n += 4) {
      const int nr = static_cast<int>(std::min<int64_t>(4, n1 - n));
      kBf16Table[t.num_rows - 1][nr - 1](t.x, t.x_stride, t.w + n * t.k, t.k, t.y + n, t.y_stride, nullptr, 0,
                                         0);
    }
    return;
  }
  for (int64_t mb = 0; mb < t.num_rows; mb += kLinearRowBlock) {
    const int64_t mb1 = std::min(t.num_rows, mb + kLinearRowBlock);
    for (int64_t n = n0; n < n1; n += 4) {
      const int nr = static_cast<int>(std::min<int64_t>(4, n1 - n));
      const bf16* next = n + 4 < n1 ? t.w + (n + 4) * t.k : nullptr;
      const int64_t quads = (mb1 - mb + 3) / 4;
      const int64_t slice = (t.k + 32 * quads - 1) / (32 * quads) * 32;  // whole chunks of 32
      for (int64_t m = mb; m < mb1; m += 4) {
        const int mr = static_cast<int>(std::min<int64_t>(4, mb1 - m));
        const int64_t quad = (m - mb) / 4;
        kBf16Table[mr - 1][nr - 1](t.x + m * t.x_stride, t.x_stride, t.w + n * t.k, t.k,
                                   t.y + m * t.y_stride + n, t.y_stride, next, quad * slice,
                                   (quad + 1) * slice);
      }
    }
  }
}

}  // namespace moe::kernels::cpu::internal

#else  // not x86-64 GCC/Clang: the AVX-512 path is never selected (CpuSupports is false).

namespace moe::kernels::cpu::internal {
void LinearBf16TaskAvx512(const Bf16Task& t, int64_t n0, int64_t n1) {
  LinearBf16TaskPortable(t, n0, n1);
}
}  // namespace moe::kernels::cpu::internal

#endif
