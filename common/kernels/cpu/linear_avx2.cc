// AVX2 + FMA path of Linear (bf16 and FP8 weights), for x86-64 CPUs without AVX-512 BF16 (e.g. AMD
// Zen 2/3, Intel Haswell to Alder Lake). Compiled without global -m flags: every function carries
// a target attribute and runs only after ActiveIsa() chose Isa::kAvx2Fma.
//
// The reduction order is exactly the one linear_internal.h documents (16 fp32 lanes per output,
// the fixed Reduce16 tree), so this path gives the portable path's results bit for bit. The 16
// lanes are two independent 8-lane halves (lanes 0-7 read k-offsets 0-15 of a 32-chunk for bf16,
// 0-31 of a 64-chunk for FP8; lanes 8-15 the rest) until Reduce16's first step adds lane i and
// i + 8, so each half is one 256-bit accumulator. Every FMA multiplies two values whose product
// is exact in fp32 (bf16 x bf16, e4m3 x e4m3), so it rounds once, like the portable add. (A bf16
// product below 2^-126 would be rounded by the portable multiply and not by the FMA; such
// products do not occur in real activations and weights, as for VDPBF16PS.)
//
// Blocking: activations and weights are widened to fp32 once into thread-local panels laid out in
// the order the lanes consume them (for FP8 the activations are quantized straight into that
// layout, once per call). Per task (64 output columns) rows go in blocks of kRowBlock; per block
// and per tile of 4 columns the weights are widened once (amortised over the block's rows), then
// k is walked in slices that keep the 4-column weight panel in L1 while every 2-row tile of the
// block passes over it; the accumulators of a tile persist across slices in memory (exact).
// Tile shapes and slices change only where an accumulator lives, never the operations it sees.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/kernels/cpu/avx2_reduce.h"
#include "common/kernels/cpu/linear_internal.h"
#include "common/tensor/fp8.h"
#include "common/tensor/linear_weight.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define MOE_AVX2_TARGET __attribute__((target("avx2,fma")))
#define MOE_AVX2_INLINE MOE_AVX2_TARGET inline __attribute__((always_inline))

namespace moe::kernels::cpu::internal {
namespace {

constexpr int kTileRows = 2;       // MR
constexpr int kTileCols = 4;       // NR
constexpr int64_t kRowBlock = 64;  // rows whose packed activations share one widened weight tile
constexpr int64_t kSliceK = 512;   // k per slice (a multiple of 128): 4 columns x 512 x 4 B = 8 KiB

// Thread-local float scratch, grown as needed.
float* Scratch(std::vector<float>& v, size_t size) {
  if (v.size() < size) v.resize(size);
  return v.data();
}
struct Panels {
  std::vector<float> x, w, acc;
};
Panels& ThreadPanels() {
  thread_local Panels panels;
  return panels;
}

// ---------------------------------------------------------------------------------------------
// BF16 weights. Packed fp32 layout of a row, per 32-chunk: [half][parity][lane], i.e. position
// 16 * half + 8 * parity + l holds k = 32c + 16 * half + 2l + (parity == 0 ? 1 : 0): odd k first,
// as lane l adds it first.

// 16 bf16 values (one half-chunk) -> the odd-k and even-k values as fp32.
MOE_AVX2_INLINE void WidenBf16(__m256i raw, __m256* odd, __m256* even) {
  *odd = _mm256_castsi256_ps(_mm256_and_si256(raw, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
  *even = _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
}

// Packs one bf16 row of length k into `out` (kc = k rounded up to 32 floats, zero padded).
MOE_AVX2_TARGET void PackBf16Row(const bf16* x, int64_t k, float* out) {
  int64_t c = 0;
  for (; c + 16 <= k; c += 16) {
    __m256 odd, even;
    WidenBf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + c)), &odd, &even);
    _mm256_storeu_ps(out + c, odd);
    _mm256_storeu_ps(out + c + 8, even);
  }
  if (c < k) {
    alignas(32) bf16 tail[16] = {};
    std::memcpy(tail, x + c, static_cast<size_t>(k - c) * sizeof(bf16));
    __m256 odd, even;
    WidenBf16(_mm256_load_si256(reinterpret_cast<const __m256i*>(tail)), &odd, &even);
    _mm256_storeu_ps(out + c, odd);
    _mm256_storeu_ps(out + c + 8, even);
    c += 16;
  }
  const int64_t kc = (k + 31) / 32 * 32;
  for (; c < kc; ++c) out[c] = 0.0f;
}

// Chunks [c0, c1) of an MR-row x 4-column tile; acc holds [half][MR * 4] accumulators (lanes
// 0-7 and 8-15). kDirect: the weights are read as raw bf16 rows (k a multiple of 32) and widened
// in registers, for row blocks too small to amortise packing them; else w points to packed rows.
template <int MR, bool kDirect>
MOE_AVX2_TARGET void MicroBf16(const float* const* x, const void* const* w, int64_t c0, int64_t c1,
                               __m256* acc_io) {
#pragma GCC unroll 2
  for (int half = 0; half < 2; ++half) {
    __m256 acc[MR][kTileCols];
#pragma GCC unroll 2
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
      for (int n = 0; n < kTileCols; ++n) acc[m][n] = acc_io[half * 8 + m * kTileCols + n];
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t off = 32 * c + 16 * half;
#pragma GCC unroll 2
      for (int parity = 0; parity < 2; ++parity) {
        __m256 wv[kTileCols];
#pragma GCC unroll 4
        for (int n = 0; n < kTileCols; ++n) {
          if constexpr (kDirect) {
            const __m256i raw =
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const bf16*>(w[n]) + off));
            wv[n] = parity == 0 ? _mm256_castsi256_ps(
                                      _mm256_and_si256(raw, _mm256_set1_epi32(static_cast<int>(0xffff0000u))))
                                : _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
          } else {
            wv[n] = _mm256_loadu_ps(static_cast<const float*>(w[n]) + off + 8 * parity);
          }
        }
#pragma GCC unroll 2
        for (int m = 0; m < MR; ++m) {
          const __m256 xv = _mm256_loadu_ps(x[m] + off + 8 * parity);
#pragma GCC unroll 4
          for (int n = 0; n < kTileCols; ++n) acc[m][n] = _mm256_fmadd_ps(xv, wv[n], acc[m][n]);
        }
      }
    }
#pragma GCC unroll 2
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
      for (int n = 0; n < kTileCols; ++n) acc_io[half * 8 + m * kTileCols + n] = acc[m][n];
  }
}

// Writes the bf16 outputs of a tile from its accumulators (rows m0.., columns n..).
MOE_AVX2_TARGET void StoreBf16Tile(const __m256* acc_io, int mr, int nr, bf16* y, int64_t y_stride) {
  __m256 s8[8];
#pragma GCC unroll 8
  for (int o = 0; o < 8; ++o) {
    const int src = std::min(o, mr * kTileCols - 1);  // a 1-row tile repeats its last output
    s8[o] = _mm256_add_ps(acc_io[src], acc_io[8 + src]);
  }
  alignas(32) float out[8];
  _mm256_store_ps(out, Reduce8x8(s8));
  for (int lane = 0; lane < 8; ++lane) {
    const int o = kLaneOutput[lane], m = o / kTileCols, n = o % kTileCols;
    if (m < mr && n < nr) y[m * y_stride + n] = FloatToBF16(out[lane]);
  }
}

// ---------------------------------------------------------------------------------------------
// FP8 weights. Packed fp32 layout per 128-block: [half][chunk c][run v][lane l], i.e. position
// 64 * half + 32 * c + 8 * v + l holds k = 64c + 32 * half + 16 * (l / 4) + 2 * (l % 4) + o_v with
// o_v = (1, 0, 9, 8)[v]: the order of linear_internal.h (per chunk, h = 0 then 8, odd then even).

int64_t Fp8Avx2Position(int64_t i) {  // i = 0..127 within a block
  const int64_t c = i / 64, half = (i % 64) / 32, r = i % 32;
  const int64_t lane = 4 * (r / 16) + (r % 8) / 2;
  const int64_t v = ((r & 8) ? 2 : 0) + ((r & 1) ? 0 : 1);
  return 64 * half + 32 * c + 8 * v + lane;
}

// Whether any of 32 e4m3 codes is a NaN (0x7f or 0xff): never in real checkpoints, so the common
// case widens without the fix-up.
MOE_AVX2_INLINE bool HasNanCode(__m256i codes) {
  const __m256i mag = _mm256_set1_epi8(0x7f);
  return _mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_and_si256(codes, mag), mag)) != 0;
}

// 32 e4m3 codes (k-offsets 0..31 of one half-chunk) -> the four fp32 runs of the layout above.
// Exact: the code's magnitude bits placed at fp32 bits 20..26 read as 2^-120 times the e4m3 value
// (subnormal codes become fp32 subnormals), so multiplying by 2^120 gives the value. With
// kNan, NaN codes become the quiet NaN (with the code's sign) that the decoding table has.
template <bool kNan>
MOE_AVX2_INLINE void WidenE4m3(__m256i codes, __m256* out) {
  const __m256 two120 = _mm256_castsi256_ps(_mm256_set1_epi32((120 + 127) << 23));
  const __m256i keep = _mm256_set1_epi32(static_cast<int>(0x87f00000u));
  constexpr int kOffset[4] = {1, 0, 9, 8};
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) {
    // Dword d of each 128-bit half takes byte 2d + o_v into its top byte.
    const char o = static_cast<char>(kOffset[v]);
    const __m256i shuffle = _mm256_setr_epi8(-128, -128, -128, o, -128, -128, -128, o + 2, -128, -128, -128,
                                             o + 4, -128, -128, -128, o + 6, -128, -128, -128, o, -128, -128,
                                             -128, o + 2, -128, -128, -128, o + 4, -128, -128, -128, o + 6);
    const __m256i t = _mm256_shuffle_epi8(codes, shuffle);  // code << 24
    __m256i bits = _mm256_and_si256(_mm256_srai_epi32(t, 4), keep);
    if constexpr (kNan) {
      const __m256i mag = _mm256_set1_epi32(0x7f000000);
      const __m256i is_nan = _mm256_cmpeq_epi32(_mm256_and_si256(t, mag), mag);
      const __m256i nan =
          _mm256_or_si256(_mm256_and_si256(t, _mm256_set1_epi32(static_cast<int>(0x80000000u))),
                          _mm256_set1_epi32(0x7fc00000));
      bits = _mm256_blendv_epi8(bits, nan, is_nan);
    }
    out[v] = _mm256_mul_ps(_mm256_castsi256_ps(bits), two120);
  }
}

MOE_AVX2_INLINE void WidenE4m3Checked(__m256i codes, __m256* out) {
  if (__builtin_expect(HasNanCode(codes), 0)) {
    WidenE4m3<true>(codes, out);
  } else {
    WidenE4m3<false>(codes, out);
  }
}

// Widens one e4m3 weight row (k codes) into the packed layout, zero padded to num_k_blocks*128.
MOE_AVX2_TARGET void PackFp8Row(const uint8_t* w, int64_t k, int64_t num_k_blocks, float* out) {
  for (int64_t kb = 0; kb < num_k_blocks; ++kb) {
    for (int64_t c = 0; c < 2; ++c) {
      for (int64_t half = 0; half < 2; ++half) {
        const int64_t k0 = kb * kFp8BlockSize + 64 * c + 32 * half;
        __m256i codes;
        if (k0 + 32 <= k) {
          codes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k0));
        } else {
          alignas(32) uint8_t tail[32] = {};  // code 0 is +0
          if (k0 < k) std::memcpy(tail, w + k0, static_cast<size_t>(k - k0));
          codes = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
        }
        __m256 runs[4];
        WidenE4m3Checked(codes, runs);
        float* dst = out + kb * kFp8BlockSize + 64 * half + 32 * c;
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) _mm256_storeu_ps(dst + 8 * v, runs[v]);
      }
    }
  }
}

// k-blocks [kb0, kb1) of an MR-row x 4-column tile: per block the 16 lanes (two halves) of each
// output, Reduce16, then total = total + (block * a_scale) * w_scale (lanes in kLaneOutput order).
// kDirect: w points to raw e4m3 rows (k a multiple of 128) widened in registers, for row blocks
// too small to amortise packing; else to packed rows.
template <int MR, bool kDirect>
MOE_AVX2_TARGET void MicroFp8(const float* const* x, const float* const* a_scale, const void* const* w,
                              const float* w_scale, int64_t kb0, int64_t kb1, __m256* total_io) {
  __m256 total = *total_io;
  for (int64_t kb = kb0; kb < kb1; ++kb) {
    __m256 halves[2][MR * kTileCols];
#pragma GCC unroll 2
    for (int half = 0; half < 2; ++half) {
      __m256 acc[MR][kTileCols];
#pragma GCC unroll 2
      for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
        for (int n = 0; n < kTileCols; ++n) acc[m][n] = _mm256_setzero_ps();
      const int64_t base = kb * kFp8BlockSize + 64 * half;
      if constexpr (kDirect) {
#pragma GCC unroll 2
        for (int c = 0; c < 2; ++c) {
#pragma GCC unroll 4
          for (int n = 0; n < kTileCols; ++n) {
            __m256 wv[4];
            WidenE4m3Checked(
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint8_t*>(w[n]) +
                                                                    kb * kFp8BlockSize + 64 * c + 32 * half)),
                wv);
#pragma GCC unroll 4
            for (int v = 0; v < 4; ++v)
#pragma GCC unroll 2
              for (int m = 0; m < MR; ++m)
                acc[m][n] = _mm256_fmadd_ps(_mm256_loadu_ps(x[m] + base + 32 * c + 8 * v), wv[v], acc[m][n]);
          }
        }
      } else {
#pragma GCC unroll 8
        for (int s = 0; s < 8; ++s) {
          __m256 wv[kTileCols];
#pragma GCC unroll 4
          for (int n = 0; n < kTileCols; ++n)
            wv[n] = _mm256_loadu_ps(static_cast<const float*>(w[n]) + base + 8 * s);
#pragma GCC unroll 2
          for (int m = 0; m < MR; ++m) {
            const __m256 xv = _mm256_loadu_ps(x[m] + base + 8 * s);
#pragma GCC unroll 4
            for (int n = 0; n < kTileCols; ++n) acc[m][n] = _mm256_fmadd_ps(xv, wv[n], acc[m][n]);
          }
        }
      }
#pragma GCC unroll 2
      for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
        for (int n = 0; n < kTileCols; ++n) halves[half][m * kTileCols + n] = acc[m][n];
    }
    __m256 s8[8];
#pragma GCC unroll 8
    for (int o = 0; o < 8; ++o) {
      const int src = std::min(o, MR * kTileCols - 1);
      s8[o] = _mm256_add_ps(halves[0][src], halves[1][src]);
    }
    const float as0 = a_scale[0][kb], as1 = a_scale[MR - 1][kb];
    const __m256 as = _mm256_setr_ps(as0, as0, as1, as1, as0, as0, as1, as1);  // kLaneOutput rows
    total =
        _mm256_add_ps(total, _mm256_mul_ps(_mm256_mul_ps(Reduce8x8(s8), as), _mm256_set1_ps(w_scale[kb])));
  }
  *total_io = total;
}

}  // namespace

MOE_AVX2_TARGET void LinearBf16TaskAvx2(const Bf16Task& t, int64_t n0, int64_t n1) {
  const int64_t kc = (t.k + 31) / 32 * 32, num_chunks = kc / 32;
  const int64_t slice_chunks = kSliceK / 32;
  Panels& p = ThreadPanels();
  const int64_t max_tiles = (kRowBlock + kTileRows - 1) / kTileRows;
  float* xp = Scratch(p.x, static_cast<size_t>(std::min(t.num_rows, kRowBlock) * kc));
  float* wp = Scratch(p.w, static_cast<size_t>(kTileCols * kc));
  __m256* acc = reinterpret_cast<__m256*>(Scratch(p.acc, static_cast<size_t>(max_tiles * 16 * 8 + 8)));
  acc = reinterpret_cast<__m256*>((reinterpret_cast<uintptr_t>(acc) + 31) & ~uintptr_t{31});
  for (int64_t mb = 0; mb < t.num_rows; mb += kRowBlock) {
    const int64_t rb = std::min(kRowBlock, t.num_rows - mb);
    const int64_t num_tiles = (rb + kTileRows - 1) / kTileRows;
    for (int64_t m = 0; m < rb; ++m) PackBf16Row(t.x + (mb + m) * t.x_stride, t.k, xp + m * kc);
    // Packing a weight tile costs about what one 2-row tile's pass over it does: worth it from
    // a few tiles on. Results are the same either way.
    const bool direct = rb <= 2 * kTileRows && t.k % 32 == 0;
    for (int64_t n = n0; n < n1; n += kTileCols) {
      const int nr = static_cast<int>(std::min<int64_t>(kTileCols, n1 - n));
      const void* w[kTileCols];
      for (int j = 0; j < kTileCols; ++j) {
        const bf16* row = t.w + (n + std::min(j, nr - 1)) * t.k;  // missing columns repeat the last
        if (direct) {
          w[j] = row;
        } else {
          if (j < nr) PackBf16Row(row, t.k, wp + j * kc);
          w[j] = wp + std::min(j, nr - 1) * kc;
        }
      }
      std::memset(static_cast<void*>(acc), 0, static_cast<size_t>(num_tiles) * 16 * sizeof(__m256));
      for (int64_t c0 = 0; c0 < num_chunks; c0 += slice_chunks) {
        const int64_t c1 = std::min(num_chunks, c0 + slice_chunks);
        for (int64_t tile = 0; tile < num_tiles; ++tile) {
          const int64_t m = tile * kTileRows;
          const int mr = static_cast<int>(std::min<int64_t>(kTileRows, rb - m));
          const float* x[kTileRows] = {xp + m * kc, xp + (m + mr - 1) * kc};
          __m256* a = acc + tile * 16;
          if (mr == 2) {
            if (direct) {
              MicroBf16<2, true>(x, w, c0, c1, a);
            } else {
              MicroBf16<2, false>(x, w, c0, c1, a);
            }
          } else if (direct) {
            MicroBf16<1, true>(x, w, c0, c1, a);
          } else {
            MicroBf16<1, false>(x, w, c0, c1, a);
          }
        }
      }
      for (int64_t tile = 0; tile < num_tiles; ++tile) {
        const int64_t m = tile * kTileRows;
        const int mr = static_cast<int>(std::min<int64_t>(kTileRows, rb - m));
        StoreBf16Tile(acc + tile * 16, mr, nr, t.y + (mb + m) * t.y_stride + n, t.y_stride);
      }
    }
  }
}

void QuantizeRowFp8PackedAvx2(const bf16* x, int64_t k, float* packed, float* scale) {
  const int64_t num_k_blocks = (k + kFp8BlockSize - 1) / kFp8BlockSize;
  thread_local std::vector<float> natural;
  float* aq = Scratch(natural, static_cast<size_t>(num_k_blocks * kFp8BlockSize));
  QuantizeRowFp8(x, k, aq, scale);
  for (int64_t kb = 0; kb < num_k_blocks; ++kb) {
    const float* src = aq + kb * kFp8BlockSize;
    float* dst = packed + kb * kFp8BlockSize;
    for (int64_t i = 0; i < kFp8BlockSize; ++i) dst[Fp8Avx2Position(i)] = src[i];
  }
}

MOE_AVX2_TARGET void LinearFp8TaskAvx2(const Fp8Task& t, int64_t n0, int64_t n1) {
  const int64_t kc = t.num_k_blocks * kFp8BlockSize;
  const int64_t slice_blocks = kSliceK / kFp8BlockSize;
  Panels& p = ThreadPanels();
  float* wp = Scratch(p.w, static_cast<size_t>(kTileCols * kc));
  const int64_t max_tiles = (kRowBlock + kTileRows - 1) / kTileRows;
  __m256* total = reinterpret_cast<__m256*>(Scratch(p.acc, static_cast<size_t>(max_tiles * 8 + 8)));
  total = reinterpret_cast<__m256*>((reinterpret_cast<uintptr_t>(total) + 31) & ~uintptr_t{31});
  for (int64_t mb = 0; mb < t.num_rows; mb += kRowBlock) {
    const int64_t rb = std::min(kRowBlock, t.num_rows - mb);
    const int64_t num_tiles = (rb + kTileRows - 1) / kTileRows;
    const bool direct = rb <= 2 * kTileRows && t.k % kFp8BlockSize == 0;
    for (int64_t n = n0; n < n1; n += kTileCols) {
      const int nr = static_cast<int>(std::min<int64_t>(kTileCols, n1 - n));
      const void* w[kTileCols];
      for (int j = 0; j < kTileCols; ++j) {
        const uint8_t* row = t.w + (n + std::min(j, nr - 1)) * t.k;  // missing columns repeat the last
        if (direct) {
          w[j] = row;
        } else {
          if (j < nr) PackFp8Row(row, t.k, t.num_k_blocks, wp + j * kc);
          w[j] = wp + std::min(j, nr - 1) * kc;
        }
      }
      // n0 is a multiple of 64 and tiles of 4 never straddle a 128-row scale group.
      const float* w_scale = t.w_scale_inv + (n / kFp8BlockSize) * t.num_k_blocks;
      std::memset(static_cast<void*>(total), 0, static_cast<size_t>(num_tiles) * sizeof(__m256));
      for (int64_t kb0 = 0; kb0 < t.num_k_blocks; kb0 += slice_blocks) {
        const int64_t kb1 = std::min(t.num_k_blocks, kb0 + slice_blocks);
        for (int64_t tile = 0; tile < num_tiles; ++tile) {
          const int64_t m = mb + tile * kTileRows;
          const int mr = static_cast<int>(std::min<int64_t>(kTileRows, mb + rb - m));
          const float* x[kTileRows] = {t.aq_packed + m * t.aq_stride,
                                       t.aq_packed + (m + mr - 1) * t.aq_stride};
          const float* as[kTileRows] = {t.a_scale + m * t.num_k_blocks,
                                        t.a_scale + (m + mr - 1) * t.num_k_blocks};
          if (mr == 2) {
            if (direct) {
              MicroFp8<2, true>(x, as, w, w_scale, kb0, kb1, total + tile);
            } else {
              MicroFp8<2, false>(x, as, w, w_scale, kb0, kb1, total + tile);
            }
          } else if (direct) {
            MicroFp8<1, true>(x, as, w, w_scale, kb0, kb1, total + tile);
          } else {
            MicroFp8<1, false>(x, as, w, w_scale, kb0, kb1, total + tile);
          }
        }
      }
      for (int64_t tile = 0; tile < num_tiles; ++tile) {
        const int64_t m = mb + tile * kTileRows;
        const int mr = static_cast<int>(std::min<int64_t>(kTileRows, mb + rb - m));
        alignas(32) float out[8];
        _mm256_store_ps(out, total[tile]);
        for (int lane = 0; lane < 8; ++lane) {
          const int o = kLaneOutput[lane], r = o / kTileCols, c = o % kTileCols;
          if (r < mr && c < nr) t.y[(m + r) * t.y_stride + n + c] = Fp8OutputToBF16(out[lane]);
        }
      }
    }
  }
}

bool Avx2FmaSupported() {
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return supported;
}

}  // namespace moe::kernels::cpu::internal

#else  // not x86-64 GCC/Clang: the AVX2 path is never selected (CpuSupports is false).

namespace moe::kernels::cpu::internal {
bool Avx2FmaSupported() {
  return false;
}
void LinearBf16TaskAvx2(const Bf16Task& t, int64_t n0, int64_t n1) {
  LinearBf16TaskPortable(t, n0, n1);
}
void QuantizeRowFp8PackedAvx2(const bf16* x, int64_t k, float* packed, float* scale) {
  QuantizeRowFp8(x, k, packed, scale);
}
void LinearFp8TaskAvx2(const Fp8Task& t, int64_t n0, int64_t n1) {
  Fp8Task natural = t;
  natural.aq = t.aq_packed;
  LinearFp8TaskPortable(natural, n0, n1);
}
}  // namespace moe::kernels::cpu::internal

#endif
