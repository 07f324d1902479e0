// AVX-512 (F/BW/DQ/VL + VBMI) path of Linear with FP8 (e4m3) weights. e4m3 values, subnormals
// included, are exact in bf16 (hence in fp32) and products of two are exact in fp32. Weight codes
// are widened with two 128-entry byte lookups (VPERMT2B: high and low byte of the bf16) and
// interleaved into bf16 words with VPUNPCK{L,H}BW, which puts them in the VDPBF16PS order
// documented in linear_internal.h (per lane: odd word, then even word). Two kernels compute the
// block dot products in that order, with the same bits as each other and the portable path;
// ActiveFp8Kernel() picks one (MOE_KERNEL_FP8):
//
// - "dot" (the default; also needs AVX-512 BF16): VDPBF16PS itself. The activations are
//   quantized once per row into bf16 words in the matching layout (Fp8DotPosition); the weights
//   of a 16-column group are widened once per block of up to 128 rows into a per-thread scratch
//   (for 1 or 2 rows: in registers, used at once). On Zen 4 this is 2-4x the fma kernel at 8 or
//   more rows.
// - "fma": the widened words are split into odd and even fp32 vectors (AND / shift) and
//   multiplied on fp32 FMA against activations quantized into a matching packed fp32 layout;
//   weights are widened again for every row tile (8 rows). It was tuned on a Xeon where a 512-bit
//   VDPBF16PS took as long as four FMAs for twice an FMA's products.
//
// Every micro-kernel keeps 16 accumulators (MR rows x NR columns, MR * NR = 16) and folds them at
// the end of each 128-wide k-block with one 16-way transposing reduction, so the per-block work
// does not grow with the tile. Each output's instruction sequence is the same for every tile
// shape, which keeps the result independent of the batch.
#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "common/kernels/cpu/avx512_reduce.h"
#include "common/kernels/cpu/linear_internal.h"
#include "common/tensor/fp8.h"
#include "common/tensor/linear_weight.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

// GCC 12's AVX-512 headers trip -Wuninitialized on their own setzero/extract helpers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define MOE_FP8_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi")))
#define MOE_FP8_INLINE MOE_FP8_TARGET inline __attribute__((always_inline))

namespace moe::kernels::cpu::internal {
namespace {

// bf16 bits of the e4m3 magnitude code c (0..127; 127 is NaN).
constexpr uint16_t E4M3MagnitudeToBf16(int c) {
  if (c == 0x7f) return 0x7fc0;
  const int e = c >> 3, m = c & 7;
  if (e != 0) return static_cast<uint16_t>(((e + 120) << 7) | (m << 4));
  if (m == 0) return 0;
  const int p = m >= 4 ? 2 : (m >= 2 ? 1 : 0);  // value m * 2^-9 = 1.f * 2^(p - 9)
  return static_cast<uint16_t>(((p - 9 + 127) << 7) | ((m - (1 << p)) << (7 - p)));
}

// High bytes (without sign) then low bytes of the 128 magnitudes, 64-byte aligned for loads.
struct alignas(64) WidenTables {
  uint8_t high[128];
  uint8_t low[128];
};
constexpr WidenTables MakeWidenTables() {
  WidenTables t{};
  for (int c = 0; c < 128; ++c) {
    t.high[c] = static_cast<uint8_t>(E4M3MagnitudeToBf16(c) >> 8);
    t.low[c] = static_cast<uint8_t>(E4M3MagnitudeToBf16(c) & 0xff);
  }
  return t;
}
constexpr WidenTables kWiden = MakeWidenTables();

struct Widener {
  __m512i high_lo, high_hi, low_lo, low_hi, sign;
  MOE_FP8_INLINE Widener()
      : high_lo(_mm512_load_si512(kWiden.high)),
        high_hi(_mm512_load_si512(kWiden.high + 64)),
        low_lo(_mm512_load_si512(kWiden.low)),
        low_hi(_mm512_load_si512(kWiden.low + 64)),
        sign(_mm512_set1_epi8(static_cast<char>(0x80))) {}
  // 64 codes (k = 0..63 of a chunk) -> two vectors of bf16 words: dword i of p[0] holds the words
  // of k = j, j + 1 (low, high) for j = 16 * (i / 4) + 2 * (i % 4), p[1] those of j + 8. These are
  // VDPBF16PS operands in the documented order (and the dot layout, Fp8DotPosition).
  MOE_FP8_INLINE void WidenWords(__m512i codes, __m512i* p) const {
    __m512i h = _mm512_permutex2var_epi8(high_lo, codes, high_hi);  // index bit 7 is ignored
    const __m512i l = _mm512_permutex2var_epi8(low_lo, codes, low_hi);
    h = _mm512_ternarylogic_epi32(h, codes, sign, 0xf8);  // h | (codes & 0x80)
    p[0] = _mm512_unpacklo_epi8(l, h);
    p[1] = _mm512_unpackhi_epi8(l, h);
  }
  // 64 codes (k = 0..63 of a chunk) -> the four fp32 vectors of the packed layout: lane i of
  // w[0] / w[1] holds k = j + 1 / k = j for j = 16 * (i / 4) + 2 * (i % 4); w[2], w[3]: j + 8.
  MOE_FP8_INLINE void Widen(__m512i codes, __m512* w) const {
    __m512i p[2];
    WidenWords(codes, p);
    const __m512i p0 = p[0], p1 = p[1];
    const __m512i high_word = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
    w[0] = _mm512_castsi512_ps(_mm512_and_si512(p0, high_word));
    w[1] = _mm512_castsi512_ps(_mm512_slli_epi32(p0, 16));
    w[2] = _mm512_castsi512_ps(_mm512_and_si512(p1, high_word));
    w[3] = _mm512_castsi512_ps(_mm512_slli_epi32(p1, 16));
  }
};

// The load mask of the 64 codes at [start, start + 64) that lie before `end`: all of them, the
// first end - start, or none. Masked-off codes load as zero, which widens to +0.
MOE_FP8_INLINE __mmask64 TailMask64(int64_t start, int64_t end) {
  if (start + 64 <= end) return ~0ull;
  return start < end ? (1ull << (end - start)) - 1 : 0;
}

// The 16 block dot products of one k-block [k0, k1) for an MR x NR tile (w: NR weight rows,
// a: MR packed activation rows), folded by Reduce16x16: lane m * NR + n.
template <int MR, int NR>
MOE_FP8_INLINE __m512 BlockFp8(const Widener& widener, const uint8_t* const* w, const float* const* a,
                               int64_t k0, int64_t k1) {
  static_assert(MR * NR == 16);
  __m512 acc[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t c = k0; c < k1; c += 64) {
    const __mmask64 mask = TailMask64(c, k1);
    // Widen one weight row at a time and use it at once: widening all NR rows first would need
    // 4 * NR more registers than there are. Activations come straight from L1.
#pragma GCC unroll 16
    for (int n = 0; n < NR; ++n) {
      __m512 wv[4];
      widener.Widen(_mm512_maskz_loadu_epi8(mask, w[n] + c), wv);
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m) {
        __m512& s = acc[m * NR + n];
        // The product is exact, so each FMA rounds once, like the add it stands for. The
        // activations are zero padded to the block end, so always whole.
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) s = _mm512_fmadd_ps(_mm512_loadu_ps(a[m] + c + 16 * q), wv[q], s);
      }
    }
  }
  return Reduce16x16(acc);
}

// Rows [m0, m0 + mr) (mr <= MR) x the columns [g, g1) of one 16-column group (g a multiple of
// 16, so inside one 128-row scale group), as 16 / NR tiles of NR columns. k-blocks are the outer
// loop, so the activations and weights in use (MR + 16 rows of one block) stay in L1 whatever k
// is. Missing rows and columns repeat the last valid one (no out-of-bounds reads) and are not
// stored.
template <int MR, int NR>
MOE_FP8_TARGET void GroupFp8(const Fp8Task& t, int64_t m0, int mr, int64_t g, int64_t g1) {
  constexpr int kTiles = 16 / NR;
  const int num_tiles = static_cast<int>((g1 - g + NR - 1) / NR);
  const Widener widener;
  const uint8_t* w[kTiles][NR];
#pragma GCC unroll 16
  for (int j = 0; j < kTiles; ++j)
#pragma GCC unroll 16
    for (int n = 0; n < NR; ++n) w[j][n] = t.w + std::min(g + j * NR + n, g1 - 1) * t.k;
  const float* a[MR];
  const float* a_scale[MR];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) {
    const int64_t row = m0 + std::min(m, mr - 1);
    a[m] = t.aq_packed + row * t.aq_stride;
    a_scale[m] = t.a_scale + row * t.num_k_blocks;
  }
  const float* w_scale = t.w_scale_inv + (g / kFp8BlockSize) * t.num_k_blocks;
  // Rows are only k bytes long and 16 are read at once: too short and too many for the hardware
  // prefetcher to ramp up. Fetch the next group (the next 16 rows, contiguous) linearly, one
  // block's share per block, into L2.
  // (Integer addresses: past the last group this points beyond the array, which prefetching
  // tolerates but pointer arithmetic would not.)
  const uintptr_t next = reinterpret_cast<uintptr_t>(t.w) + (g + 16) * t.k;

  __m512 total[kTiles];
#pragma GCC unroll 16
  for (int j = 0; j < kTiles; ++j) total[j] = _mm512_setzero_ps();
  for (int64_t kb = 0; kb < t.num_k_blocks; ++kb) {
    for (int i = 0; i < 16 * kFp8BlockSize; i += 64)
      _mm_prefetch(reinterpret_cast<const char*>(next + kb * 16 * kFp8BlockSize + i), _MM_HINT_T1);
    const int64_t k0 = kb * kFp8BlockSize;
    const int64_t k1 = std::min(t.k, k0 + kFp8BlockSize);
    __m512 as = _mm512_set1_ps(a_scale[0][kb]);
#pragma GCC unroll 16
    for (int m = 1; m < MR; ++m)
      as = _mm512_mask_mov_ps(as, static_cast<__mmask16>(((1u << NR) - 1) << (m * NR)),
                              _mm512_set1_ps(a_scale[m][kb]));
    const __m512 ws = _mm512_set1_ps(w_scale[kb]);
#pragma GCC unroll 16
    for (int j = 0; j < kTiles; ++j) {
      if (j >= num_tiles) break;
      const __m512 block = BlockFp8<MR, NR>(widener, w[j], a, k0, k1);
      total[j] = _mm512_add_ps(total[j], _mm512_mul_ps(_mm512_mul_ps(block, as), ws));
    }
  }
  for (int j = 0; j < num_tiles; ++j) {
    alignas(64) float out[16];
    _mm512_store_ps(out, total[j]);
    const int64_t n0 = g + j * NR;
    const int nr = static_cast<int>(std::min<int64_t>(NR, g1 - n0));
    for (int m = 0; m < mr; ++m)
      for (int n = 0; n < nr; ++n) t.y[(m0 + m) * t.y_stride + n0 + n] = Fp8OutputToBF16(out[m * NR + n]);
  }
}

// Float bits of a zero-padded 16-value slice of x, as floats.
MOE_FP8_INLINE __m512 LoadBf16(const bf16* x, int64_t count) {
  const __mmask16 mask =
      count >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << count) - 1);
  const __m256i raw = _mm256_maskz_loadu_epi16(mask, x);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// RoundToE4M3 on 16 lanes with the same IEEE operations, hence the same results.
MOE_FP8_INLINE __m512 RoundToE4M3Avx(__m512 v) {
  const __m512 a = _mm512_abs_ps(v);
  const __m512 shift = _mm512_set1_ps(24576.0f);
  const __m512 sub = _mm512_sub_ps(_mm512_add_ps(a, shift), shift);
  __m512i u = _mm512_castps_si512(a);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 20), _mm512_set1_epi32(1));
  u = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7ffff)), odd);
  u = _mm512_and_si512(u, _mm512_set1_epi32(static_cast<int>(0xfff00000u)));
  const __mmask16 is_sub = _mm512_cmp_ps_mask(a, _mm512_set1_ps(0.015625f), _CMP_LT_OQ);
  const __m512 q = _mm512_mask_mov_ps(_mm512_castsi512_ps(u), is_sub, sub);
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(INT32_MIN));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(q), sign));
}

// Quantizes the group of `valid` (1..128) values at x (QuantizeRowFp8's steps, same IEEE
// operations): v[i] = a_q of k = 16i..16i+15 (zero past valid); returns the group's scale.
MOE_FP8_INLINE float QuantizeGroupAvx512(const bf16* x, int64_t valid, __m512* v) {
  __m512 amax = _mm512_setzero_ps();
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    v[i] = LoadBf16(x + 16 * i, std::clamp<int64_t>(valid - 16 * i, 0, 16));
    // Operand order as in std::max(amax, |x|): a NaN x is skipped, as in QuantizeRowFp8.
    amax = _mm512_max_ps(_mm512_abs_ps(v[i]), amax);
  }
  const float s = std::max(_mm512_reduce_max_ps(amax), 1e-10f) / kFp8E4M3Max;
  const __m512 sv = _mm512_set1_ps(s);
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    const __m512 q = _mm512_div_ps(v[i], sv);
    // std::clamp: a NaN passes through (MAXPS/MINPS return the second operand then).
    v[i] = RoundToE4M3Avx(
        _mm512_min_ps(_mm512_set1_ps(kFp8E4M3Max), _mm512_max_ps(_mm512_set1_ps(-kFp8E4M3Max), q)));
  }
  return s;
}

// ---- The dot kernel: VDPBF16PS on widened weights.
//
// Per task, rows are taken in blocks of up to kDotRowBlock, and per block each 16-column group in
// slices of kDotSliceBlocks k-blocks: the slice's weights are widened once (dot layout, 2 x 64
// bytes per 64 codes: 16 KiB) into a per-thread scratch that stays in L1 while every row tile of
// the block runs over it; the row tiles' running totals wait in a small per-thread buffer between
// slices. Batches of at most kDotStreamRows rows instead read the weights in memory order, a weight
// row at a time, widening each 64 codes in registers and using them at once (StreamDot: a scratch
// would be written and read back for one or two rows). Row tiles are 4 x 4 (3 rows: the last
// repeated), 2 x 8 or 1 x 16, 16 accumulators each, folded per 128-wide k-block by the same
// transposing reduction as the fma kernel. Every output sees the same VDPBF16PS sequence on the
// same words (zero padded to the block end in both operands, so the padded products add +0, which
// changes nothing), then the same scalar steps per block, whatever the tile, block or slice, so the
// result does not depend on the batch.
constexpr int64_t kDotRowBlock = 128;
constexpr int64_t kDotSliceBlocks = 4;
constexpr int64_t kDotSliceWords = kDotSliceBlocks * kFp8BlockSize;  // per column
constexpr int64_t kDotStreamRows = 2;

#define MOE_FP8_DOT_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512bf16")))
#define MOE_FP8_DOT_INLINE MOE_FP8_DOT_TARGET inline __attribute__((always_inline))

// Widens k-blocks [kb0, kb1) of columns [g, g1) (g1 - g <= 16) into scratch: column n - g at
// (n - g) * kDotSliceWords words. Also prefetches into L2 the codes the next slice will widen
// (the next k range of these rows, or the next group's first): 16 short runs, k bytes apart, which
// the hardware prefetcher would not find in time.
MOE_FP8_DOT_TARGET void WidenSliceDot(const Fp8Task& t, int64_t g, int64_t g1, int64_t kb0, int64_t kb1,
                                      uint16_t* scratch) {
  const Widener widener;
  const int64_t c0 = kb0 * kFp8BlockSize, c1 = kb1 * kFp8BlockSize;
  const bool last = kb1 >= t.num_k_blocks;
  const int64_t next_c0 = last ? 0 : c1;
  const int64_t next_c1 = std::min(t.k, last ? kDotSliceWords : c1 + kDotSliceWords);
  // (Integer addresses: past the last group this points beyond the array, which prefetching
  // tolerates but pointer arithmetic would not.)
  const uintptr_t next_rows = reinterpret_cast<uintptr_t>(t.w) + (last ? g + 16 : g) * t.k;
  for (int64_t n = g; n < g1; ++n) {
    for (int64_t c = next_c0; c < next_c1; c += 64)
      _mm_prefetch(reinterpret_cast<const char*>(next_rows + (n - g) * t.k + c), _MM_HINT_T1);
    const uint8_t* w = t.w + n * t.k;
    uint16_t* out = scratch + (n - g) * kDotSliceWords - c0;
    for (int64_t c = c0; c < c1; c += 64) {
      const __mmask64 mask = TailMask64(c, t.k);
      __m512i p[2];
      widener.WidenWords(_mm512_maskz_loadu_epi8(mask, w + c), p);  // zero codes widen to +0
      _mm512_store_si512(out + c, p[0]);
      _mm512_store_si512(out + c + 32, p[1]);
    }
  }
}

// The 16 block dot products of one k-block for an MR x NR tile, folded by Reduce16x16 (lane
// m * NR + n). a: MR activation rows at the block (dot layout, 4 vectors of 32 words); w: NR
// columns at the block in the scratch.
template <int MR, int NR>
MOE_FP8_DOT_INLINE __m512 BlockDot(const uint16_t* const* w, const uint16_t* const* a) {
  static_assert(MR * NR == 16);
  __m512 acc[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) {
    __m512i wv[NR];
#pragma GCC unroll 16
    for (int n = 0; n < NR; ++n) wv[n] = _mm512_load_si512(w[n] + 32 * v);
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      const __m512i av = _mm512_loadu_si512(a[m] + 32 * v);
#pragma GCC unroll 16
      for (int n = 0; n < NR; ++n)
        acc[m * NR + n] = _mm512_dpbf16_ps(acc[m * NR + n], (__m512bh)av, (__m512bh)wv[n]);
    }
  }
  return Reduce16x16(acc);
}

// Rows [m0, m0 + mr) (mr <= MR) x the columns [g, g1) of one 16-column group (g a multiple of
// 16, so inside one 128-row scale group), as 16 / NR tiles of NR columns, over k-blocks
// [kb0, kb1), which scratch holds widened (WidenSliceDot). The running totals
// start at +0 when kb0 = 0, else come from `totals` (16 floats per tile); when kb1 is the last
// block the outputs are stored, else the totals go back to `totals`. Missing rows and columns
// repeat the last valid one and are not stored.
template <int MR, int NR>
MOE_FP8_DOT_TARGET void TileDot(const Fp8Task& t, const uint16_t* scratch, int64_t kb0, int64_t kb1,
                                float* totals, int64_t m0, int mr, int64_t g, int64_t g1) {
  constexpr int kTiles = 16 / NR;
  const int num_tiles = static_cast<int>((g1 - g + NR - 1) / NR);
  const uint16_t* w[kTiles][NR];
#pragma GCC unroll 16
  for (int j = 0; j < kTiles; ++j) {
#pragma GCC unroll 16
    for (int n = 0; n < NR; ++n) {
      const int64_t col = std::min(g + j * NR + n, g1 - 1);
      w[j][n] = scratch + (col - g) * kDotSliceWords - kb0 * kFp8BlockSize;
    }
  }
  const uint16_t* a[MR];
  const float* a_scale[MR];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) {
    const int64_t row = m0 + std::min(m, mr - 1);
    a[m] = t.aq_dot + row * t.aq_stride;
    a_scale[m] = t.a_scale + row * t.num_k_blocks;
  }
  const float* w_scale = t.w_scale_inv + (g / kFp8BlockSize) * t.num_k_blocks;

  __m512 total[kTiles];
#pragma GCC unroll 16
  for (int j = 0; j < kTiles; ++j)
    total[j] = kb0 == 0 ? _mm512_setzero_ps() : _mm512_load_ps(totals + 16 * j);
  for (int64_t kb = kb0; kb < kb1; ++kb) {
    const int64_t k0 = kb * kFp8BlockSize;
    __m512 as = _mm512_set1_ps(a_scale[0][kb]);
#pragma GCC unroll 16
    for (int m = 1; m < MR; ++m)
      as = _mm512_mask_mov_ps(as, static_cast<__mmask16>(((1u << NR) - 1) << (m * NR)),
                              _mm512_set1_ps(a_scale[m][kb]));
    const __m512 ws = _mm512_set1_ps(w_scale[kb]);
    const uint16_t* ab[MR];
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) ab[m] = a[m] + k0;
#pragma GCC unroll 16
    for (int j = 0; j < kTiles; ++j) {
      if (j >= num_tiles) break;
      const uint16_t* wb[NR];
#pragma GCC unroll 16
      for (int n = 0; n < NR; ++n) wb[n] = w[j][n] + k0;
      const __m512 block = BlockDot<MR, NR>(wb, ab);
      total[j] = _mm512_add_ps(total[j], _mm512_mul_ps(_mm512_mul_ps(block, as), ws));
    }
  }
  if (kb1 < t.num_k_blocks) {
#pragma GCC unroll 16
    for (int j = 0; j < kTiles; ++j) _mm512_store_ps(totals + 16 * j, total[j]);
    return;
  }
  for (int j = 0; j < num_tiles; ++j) {
    alignas(64) float out[16];
    _mm512_store_ps(out, total[j]);
    const int64_t n0 = g + j * NR;
    const int nr = static_cast<int>(std::min<int64_t>(NR, g1 - n0));
    for (int m = 0; m < mr; ++m)
      for (int n = 0; n < nr; ++n) t.y[(m0 + m) * t.y_stride + n0 + n] = Fp8OutputToBF16(out[m * NR + n]);
  }
}

// MR (1 or 2) activation rows against the columns [g, g1) of one 16-column group, a weight row at a
// time in memory order (as the bf16 GEMV's MicroBf16Stream): kPer columns' k-blocks at a time
// (kSlots = 16 / (MR * kPer) blocks each) are dotted into one accumulator per row and block, folded
// by Reduce16x16 (lane kSlots * (MR * h + m) + b: column h, row m, block b), scaled per block and
// added to each output's total in block order. Every block sees the same VDPBF16PS sequence and
// fold as the scratch path's TileDot<MR, 16 / MR>, and the totals the same scalar steps, so the
// outputs are the same bits.
// Against the kernel it replaced (16 weight rows widened in registers 128 bytes at a time, plus a
// linear prefetch of the next group),
// same-process A/B on Zen 4 (2 threads, weights cycled through 512 MiB, 20 interleaved rounds,
// medians): 1.04-1.35x the bandwidth at 1 row and 0.98-1.17x at 2 over the q/kv/expert/down
// shapes; with the weights in cache it is 0.72-0.96x, so the gain is the memory order, not the
// arithmetic.
//
// Each 64 codes it reads, it prefetches the codes kStreamPrefetchBytes further on into L1 (the
// next weight rows: the stream is one linear run per task). Without it, on a Zen 5 VM
// (kernels_bench, 2 threads, two interleaved rounds) 40 % of the kernel's samples waited on the
// first load of each weight row and a GEMV ran at 11-13 GB/s (0.16-0.17 of the read bandwidth);
// with 4 KiB ahead 25-42 GB/s: 3.2-3.4x at 1 row on q_proj and expert, 2.1-2.4x on down, 1.9-2.7x at
// 2 rows; 1 KiB, 8 KiB and 16 KiB ahead were slower than 4 KiB.
constexpr uintptr_t kStreamPrefetchBytes = 4096;
template <int MR, int kPer>
MOE_FP8_DOT_TARGET void StreamDot(const Fp8Task& t, int64_t g, int64_t g1) {
  constexpr int kSlots = 16 / (MR * kPer);
  const Widener widener;
  const uint16_t* a[MR];
  const float* a_scale[MR];
#pragma GCC unroll 2
  for (int m = 0; m < MR; ++m) {
    a[m] = t.aq_dot + m * t.aq_stride;
    a_scale[m] = t.a_scale + m * t.num_k_blocks;
  }
  const float* w_scale = t.w_scale_inv + (g / kFp8BlockSize) * t.num_k_blocks;
  for (int64_t n = g; n < g1; n += kPer) {
    float total[kPer][MR] = {};
    for (int64_t kb0 = 0; kb0 < t.num_k_blocks; kb0 += kSlots) {
      const int nb = static_cast<int>(std::min<int64_t>(kSlots, t.num_k_blocks - kb0));
      __m512 acc[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
#pragma GCC unroll 2
      for (int h = 0; h < kPer; ++h) {
        const uint8_t* codes = t.w + std::min(n + h, g1 - 1) * t.k;
#pragma GCC unroll 16
        for (int b = 0; b < kSlots; ++b) {
          if (b >= nb) break;
          const int64_t k0 = (kb0 + b) * kFp8BlockSize;
          const int64_t k1 = std::min(t.k, k0 + kFp8BlockSize);
#pragma GCC unroll 2
          for (int c = 0; c < 2; ++c) {
            const int64_t kc = k0 + 64 * c;
            const __mmask64 mask = TailMask64(kc, k1);
            // The codes kStreamPrefetchBytes ahead in memory order (the next weight rows).
            _mm_prefetch(
                reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(codes + kc) + kStreamPrefetchBytes),
                _MM_HINT_T0);
            __m512i p[2];
            widener.WidenWords(_mm512_maskz_loadu_epi8(mask, codes + kc), p);
#pragma GCC unroll 2
            for (int m = 0; m < MR; ++m) {
              __m512& s = acc[kSlots * (MR * h + m) + b];
              s = _mm512_dpbf16_ps(s, (__m512bh)_mm512_loadu_si512(a[m] + kc), (__m512bh)p[0]);
              s = _mm512_dpbf16_ps(s, (__m512bh)_mm512_loadu_si512(a[m] + kc + 32), (__m512bh)p[1]);
            }
          }
        }
      }
      alignas(64) float as[16], ws[16];
      for (int h = 0; h < kPer; ++h) {
        for (int m = 0; m < MR; ++m) {
          for (int b = 0; b < kSlots; ++b) {
            as[kSlots * (MR * h + m) + b] = b < nb ? a_scale[m][kb0 + b] : 0.0f;
            ws[kSlots * (MR * h + m) + b] = b < nb ? w_scale[kb0 + b] : 0.0f;
          }
        }
      }
      alignas(64) float scaled[16];
      _mm512_store_ps(scaled,
                      _mm512_mul_ps(_mm512_mul_ps(Reduce16x16(acc), _mm512_load_ps(as)), _mm512_load_ps(ws)));
      for (int h = 0; h < kPer; ++h)
        for (int m = 0; m < MR; ++m)
          for (int b = 0; b < nb; ++b) total[h][m] += scaled[kSlots * (MR * h + m) + b];
    }
    for (int h = 0; h < kPer && n + h < g1; ++h)
      for (int m = 0; m < MR; ++m) t.y[m * t.y_stride + n + h] = Fp8OutputToBF16(total[h][m]);
  }
}

// Rows [m0, m1) of one group over k-blocks [kb0, kb1): 4 x 4 tiles while at least 3 rows remain,
// then 2 x 8 or 1 x 16. The tile starting at row m keeps its totals at totals + 16 * (m - m0)
// (a tile of MR rows has 16 * MR floats; the one 3-row tile is the last).
MOE_FP8_DOT_TARGET void RowsDot(const Fp8Task& t, const uint16_t* scratch, int64_t kb0, int64_t kb1,
                                float* totals, int64_t m0, int64_t m1, int64_t g, int64_t g1) {
  for (int64_t m = m0; m < m1;) {
    const int64_t left = m1 - m;
    float* tile_totals = totals == nullptr ? nullptr : totals + 16 * (m - m0);
    if (left >= 3) {
      const int mr = static_cast<int>(std::min<int64_t>(4, left));
      TileDot<4, 4>(t, scratch, kb0, kb1, tile_totals, m, mr, g, g1);
      m += mr;
    } else if (left == 2) {
      TileDot<2, 8>(t, scratch, kb0, kb1, tile_totals, m, 2, g, g1);
      m += 2;
    } else {
      TileDot<1, 16>(t, scratch, kb0, kb1, tile_totals, m, 1, g, g1);
      m += 1;
    }
  }
}

// A 64-byte aligned view of a per-thread buffer of at least `count` elements.
template <typename T>
T* AlignedScratch(std::vector<T>& buffer, size_t count) {
  if (buffer.size() < count + 64 / sizeof(T)) buffer.resize(count + 64 / sizeof(T));
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(buffer.data()) + 63) & ~uintptr_t{63});
}

}  // namespace

bool Fp8Avx512Supported() {
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vbmi");
  }();
  return supported;
}

MOE_FP8_TARGET void QuantizeRowFp8PackedAvx512(const bf16* x, int64_t k, float* packed, float* scale) {
  // Packed vector v (0..3) of a chunk, lane i: k-offset 16 * (i / 4) + 2 * (i % 4) + (1, 0, 9,
  // 8)[v], gathered from natural vectors 2 * (i / 8) and 2 * (i / 8) + 1 by a two-source permute.
  alignas(64) static constexpr std::array<std::array<int32_t, 16>, 4> kIdx = [] {
    std::array<std::array<int32_t, 16>, 4> idx{};
    constexpr int kOffset[4] = {1, 0, 9, 8};
    for (int v = 0; v < 4; ++v)
      for (int i = 0; i < 16; ++i) idx[v][i] = ((i / 4) & 1) * 16 + 2 * (i % 4) + kOffset[v];
    return idx;
  }();
  const int64_t num_groups = (k + kFp8BlockSize - 1) / kFp8BlockSize;
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t k0 = g * kFp8BlockSize;
    __m512 v[8];
    scale[g] = QuantizeGroupAvx512(x + k0, std::min<int64_t>(kFp8BlockSize, k - k0), v);
#pragma GCC unroll 2
    for (int c = 0; c < 2; ++c) {
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) {
        const __m512i idx = _mm512_load_si512(kIdx[p].data());
        const __m512 lo = _mm512_permutex2var_ps(v[4 * c], idx, v[4 * c + 1]);
        const __m512 hi = _mm512_permutex2var_ps(v[4 * c + 2], idx, v[4 * c + 3]);
        _mm512_storeu_ps(packed + k0 + 64 * c + 16 * p, _mm512_mask_mov_ps(lo, 0xff00, hi));
      }
    }
  }
}

MOE_FP8_TARGET void QuantizeRowFp8DotAvx512(const bf16* x, int64_t k, uint16_t* packed, float* scale) {
  // Word 2i of a 32-word vector: the high half of float i of the first source, word 2i + 1 ... of
  // the second: indexes 2i + 1 (i < 16) and 32 + 2i + 1 into the two sources as 32-word vectors.
  alignas(64) static constexpr std::array<uint16_t, 32> kHighWords = [] {
    std::array<uint16_t, 32> idx{};
    for (int i = 0; i < 32; ++i) idx[i] = static_cast<uint16_t>(2 * i + 1);
    return idx;
  }();
  const __m512i high_words = _mm512_load_si512(kHighWords.data());
  const int64_t num_groups = (k + kFp8BlockSize - 1) / kFp8BlockSize;
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t k0 = g * kFp8BlockSize;
    __m512 v[8];
    scale[g] = QuantizeGroupAvx512(x + k0, std::min<int64_t>(kFp8BlockSize, k - k0), v);
    // e4m3 values (and the NaNs RoundToE4M3Avx leaves) have their low 20 bits zero: the high
    // word is the exact bf16.
#pragma GCC unroll 2
    for (int c = 0; c < 2; ++c) {
      // 128-bit lanes of w01: words of k = 0..7, 8..15, 16..23, 24..31 of the chunk; w23: 32..63.
      const __m512i w01 = _mm512_permutex2var_epi16(_mm512_castps_si512(v[4 * c]), high_words,
                                                    _mm512_castps_si512(v[4 * c + 1]));
      const __m512i w23 = _mm512_permutex2var_epi16(_mm512_castps_si512(v[4 * c + 2]), high_words,
                                                    _mm512_castps_si512(v[4 * c + 3]));
      uint16_t* out = packed + k0 + 64 * c;
      _mm512_storeu_si512(out, _mm512_shuffle_i64x2(w01, w23, _MM_SHUFFLE(2, 0, 2, 0)));       // h = 0
      _mm512_storeu_si512(out + 32, _mm512_shuffle_i64x2(w01, w23, _MM_SHUFFLE(3, 1, 3, 1)));  // h = 8
    }
  }
}

// Per 16-column group, row tiles of 8 x 2 while at least 8 rows remain (weights widened once per
// 8 rows), then 4 x 4, 2 x 8 or 1 x 16 for the rest.
void LinearFp8TaskAvx512(const Fp8Task& t, int64_t n0, int64_t n1) {
  for (int64_t g = n0; g < n1; g += 16) {
    const int64_t g1 = std::min(n1, g + 16);
    for (int64_t m = 0; m < t.num_rows;) {
      const int64_t left = t.num_rows - m;
      if (left >= 8) {
        GroupFp8<8, 2>(t, m, 8, g, g1);
        m += 8;
      } else if (left >= 3) {
        const int mr = static_cast<int>(std::min<int64_t>(4, left));
        GroupFp8<4, 4>(t, m, mr, g, g1);
        m += mr;
      } else if (left == 2) {
        GroupFp8<2, 8>(t, m, 2, g, g1);
        m += 2;
      } else {
        GroupFp8<1, 16>(t, m, 1, g, g1);
        m += 1;
      }
    }
  }
}

void LinearFp8TaskAvx512Dot(const Fp8Task& t, int64_t n0, int64_t n1) {
  if (t.num_rows <= kDotStreamRows) {
    // Two columns share a fold when their blocks fit in it.
    using Stream = void (*)(const Fp8Task&, int64_t, int64_t);
    const Stream stream = t.num_rows == 1 ? (t.num_k_blocks <= 8 ? StreamDot<1, 2> : StreamDot<1, 1>)
                                          : (t.num_k_blocks <= 4 ? StreamDot<2, 2> : StreamDot<2, 1>);
    for (int64_t g = n0; g < n1; g += 16) stream(t, g, std::min(n1, g + 16));
    return;
  }
  thread_local std::vector<uint16_t> scratch_buffer;
  thread_local std::vector<float> totals_buffer;
  uint16_t* scratch = AlignedScratch(scratch_buffer, 16 * kDotSliceWords);
  float* totals = AlignedScratch(totals_buffer, 16 * (kDotRowBlock + 1));  // + 1: a 3-row last tile
  for (int64_t mb = 0; mb < t.num_rows; mb += kDotRowBlock) {
    const int64_t mb1 = std::min(t.num_rows, mb + kDotRowBlock);
    for (int64_t g = n0; g < n1; g += 16) {
      const int64_t g1 = std::min(n1, g + 16);
      for (int64_t kb0 = 0; kb0 < t.num_k_blocks; kb0 += kDotSliceBlocks) {
        const int64_t kb1 = std::min(t.num_k_blocks, kb0 + kDotSliceBlocks);
        WidenSliceDot(t, g, g1, kb0, kb1, scratch);
        RowsDot(t, scratch, kb0, kb1, totals, mb, mb1, g, g1);
      }
    }
  }
}

}  // namespace moe::kernels::cpu::internal

#else  // not x86-64 GCC/Clang: the AVX-512 path is never selected.

namespace moe::kernels::cpu::internal {
bool Fp8Avx512Supported() {
  return false;
}
// Never called (Fp8Avx512Supported is false), but kept a correct equivalent.
void QuantizeRowFp8PackedAvx512(const bf16* x, int64_t k, float* packed, float* scale) {
  const int64_t padded = (k + kFp8BlockSize - 1) / kFp8BlockSize * kFp8BlockSize;
  std::vector<float> aq(padded);
  QuantizeRowFp8(x, k, aq.data(), scale);
  for (int64_t i = 0; i < padded; ++i) packed[i / 64 * 64 + Fp8PackedPosition(i % 64)] = aq[i];
}
void LinearFp8TaskAvx512(const Fp8Task& t, int64_t n0, int64_t n1) {
  LinearFp8TaskPortable(t, n0, n1);
}
void QuantizeRowFp8DotAvx512(const bf16* x, int64_t k, uint16_t* packed, float* scale) {
  const int64_t padded = (k + kFp8BlockSize - 1) / kFp8BlockSize * kFp8BlockSize;
  std::vector<float> aq(padded);
  QuantizeRowFp8(x, k, aq.data(), scale);
  for (int64_t i = 0; i < padded; ++i) packed[i / 64 * 64 + Fp8DotPosition(i % 64)] = FloatToBF16(aq[i]).bits;
}
void LinearFp8TaskAvx512Dot(const Fp8Task& t, int64_t n0, int64_t n1) {
  LinearFp8TaskPortable(t, n0, n1);
}
}  // namespace moe::kernels::cpu::internal

#endif
