// Paged KV cache writes and causal paged attention (docs/numerics.md#paged-attention, the fp32
// path: fp32 QK^T and softmax, P rounded to bf16, fp32 P·V, bf16 output). Three implementations
// with identical results (attention_internal.h): scalar, per-token AVX2 and tiled AVX2/AVX-512.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/kernels/cpu/attention_internal.h"
#include "common/kernels/cpu/avx2_reduce.h"
#include "common/kernels/cpu/cpu_features.h"
#include "common/kernels/cpu/kernels.h"
#include "common/kernels/cpu/linear_internal.h"
#include "common/kernels/cpu/thread_pool.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MOE_ATTENTION_AVX2 1
#endif

namespace moe::kernels::cpu {
namespace {

// SoftmaxExp's constants (attention_internal.h).
constexpr float kExpLog2e = 1.44269504088896341f;
constexpr float kExpRound = 12582912.0f;         // 1.5 * 2^23: adding and subtracting it rounds to an integer
constexpr float kExpLn2Hi = 0.693145751953125f;  // 45426 / 2^16: ln 2 to 16 bits
constexpr float kExpLn2Lo = 1.42860677e-6f;      // ln 2 - kExpLn2Hi
constexpr float kExpMin = -87.33654f;            // the smallest float x with exp(x) >= FLT_MIN
// q(r) ~ (e^r - 1 - r) / r^2 on |r| <= ln(2)/2 (a minimax fit of the relative error of e^r).
constexpr float kExpQ0 = 0.5f, kExpQ1 = 0.166665301f, kExpQ2 = 0.0416671559f, kExpQ3 = 0.00836769678f,
                kExpQ4 = 0.00138825236f;

}  // namespace

namespace internal {

// The vector forms (Exp8, Exp16 below) repeat these operations in this order.
float SoftmaxExp(float x) {
  const float t = x * kExpLog2e + kExpRound;
  const float n = t - kExpRound;
  float r = x - n * kExpLn2Hi;
  r = r - n * kExpLn2Lo;
  float q = kExpQ4;
  q = q * r + kExpQ3;
  q = q * r + kExpQ2;
  q = q * r + kExpQ1;
  q = q * r + kExpQ0;
  const float p = (q * (r * r) + r) + 1.0f;
  // t's low mantissa bits hold n (two's complement); (n + 127) << 23 is 2^n.
  const float e = p * std::bit_cast<float>((std::bit_cast<uint32_t>(t) + 127u) << 23);
  return x < kExpMin ? 0.0f : e;
}

}  // namespace internal

namespace {

// The inner loops are cloned for AVX-512 and baseline x86-64 and picked by the loader. Both
// clones perform the same fp32 operations in the same order (independent lanes, no contraction:
// the library builds with -ffp-contract=off), so they give identical results. Not under
// ThreadSanitizer: the loader runs the clone resolver before TSan's runtime is up, and the
// instrumented resolver crashes.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define MOE_CLONES __attribute__((target_clones("avx512f", "default")))
#else
#define MOE_CLONES
#endif

// Fixed order: lane i sums q[d]*k[d] for d = i mod 16 ascending, then Reduce16.
MOE_CLONES float DotQK(const float* q, const bf16* k, int64_t dim) {
  float lane[16] = {};
  int64_t d = 0;
  for (; d + 16 <= dim; d += 16) {
    for (int i = 0; i < 16; ++i) lane[i] += q[d + i] * BF16ToFloat(k[d + i]);
  }
  for (int i = 0; d + i < dim; ++i) lane[i] += q[d + i] * BF16ToFloat(k[d + i]);
  return internal::Reduce16(lane);
}

MOE_CLONES void AccumulatePV(float p, const bf16* v, int64_t dim, float* out) {
  for (int64_t d = 0; d < dim; ++d) out[d] += p * BF16ToFloat(v[d]);
}

struct AttentionScratch {
  std::vector<float> scores;
  std::vector<float> q;
  std::vector<float> out;
};

AttentionScratch& Scratch() {
  thread_local AttentionScratch scratch;
  return scratch;
}

#if MOE_ATTENTION_AVX2
#define MOE_AVX2_TARGET __attribute__((target("avx2")))
#define MOE_AVX2_INLINE MOE_AVX2_TARGET inline __attribute__((always_inline))

// SoftmaxExp on 8 lanes (attention_internal.h): the same operations in the same order.
MOE_AVX2_INLINE __m256 Exp8(__m256 x) {
  const __m256 t = _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(kExpLog2e)), _mm256_set1_ps(kExpRound));
  const __m256 n = _mm256_sub_ps(t, _mm256_set1_ps(kExpRound));
  __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(kExpLn2Hi)));
  r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(kExpLn2Lo)));
  __m256 q = _mm256_set1_ps(kExpQ4);
  q = _mm256_add_ps(_mm256_mul_ps(q, r), _mm256_set1_ps(kExpQ3));
  q = _mm256_add_ps(_mm256_mul_ps(q, r), _mm256_set1_ps(kExpQ2));
  q = _mm256_add_ps(_mm256_mul_ps(q, r), _mm256_set1_ps(kExpQ1));
  q = _mm256_add_ps(_mm256_mul_ps(q, r), _mm256_set1_ps(kExpQ0));
  const __m256 p =
      _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(q, _mm256_mul_ps(r, r)), r), _mm256_set1_ps(1.0f));
  const __m256i scale =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127)), 23);
  const __m256 e = _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
  return _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(kExpMin), _CMP_LT_OQ), e);
}

MOE_AVX2_TARGET void SoftmaxExpRowAvx2(float* x, int64_t n, float shift) {
  const __m256 s8 = _mm256_set1_ps(shift);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(x + j, Exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), s8)));
  for (; j < n; ++j) x[j] = internal::SoftmaxExp(x[j] - shift);
}

// AVX2 path of one (token, KV head) pair: all query heads of the KV group at once, so every key
// and value row is widened once for the group, not once per head. Each (query head, key) dot
// product and each output element sees exactly the scalar path's operations in the same order
// (separate multiply and add, lane i of DotQK in the low or high 8-lane half, the Reduce16 tree,
// ascending j in P·V), so the results are bit-identical. Requires head_dim % 16 == 0.

// 8 bf16 -> 8 fp32.
MOE_AVX2_INLINE __m256 Bf16x8(const bf16* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

using internal::kLaneOutput;
using internal::Reduce8x8;

// scores[hh * stride + j] = DotQK(q + hh * dim, k_j) * scale for up to 8 heads hh < nh.
MOE_AVX2_TARGET void GroupScoresAvx2(const float* q, int nh, const bf16* const* krow, int64_t context,
                                     int64_t dim, float scale, float* scores, int64_t stride) {
  for (int64_t j = 0; j < context; ++j) {
    __m256 s8[8];
#pragma GCC unroll 2
    for (int h0 = 0; h0 < 8; h0 += 4) {
      __m256 lo[4], hi[4];
      const float* qh[4];
#pragma GCC unroll 8
      for (int i = 0; i < 4; ++i) {
        lo[i] = _mm256_setzero_ps();
        hi[i] = _mm256_setzero_ps();
        qh[i] = q + std::min(h0 + i, nh - 1) * dim;  // missing heads repeat the last
      }
      for (int64_t d = 0; d < dim; d += 16) {
        const __m256 klo = Bf16x8(krow[j] + d), khi = Bf16x8(krow[j] + d + 8);
#pragma GCC unroll 8
        for (int i = 0; i < 4; ++i) {
          lo[i] = _mm256_add_ps(lo[i], _mm256_mul_ps(_mm256_loadu_ps(qh[i] + d), klo));
          hi[i] = _mm256_add_ps(hi[i], _mm256_mul_ps(_mm256_loadu_ps(qh[i] + d + 8), khi));
        }
      }
#pragma GCC unroll 8
      for (int i = 0; i < 4; ++i) s8[h0 + i] = _mm256_add_ps(lo[i], hi[i]);
    }
    alignas(32) float dots[8];
    _mm256_store_ps(dots, Reduce8x8(s8));
#pragma GCC unroll 8
    for (int lane = 0; lane < 8; ++lane) {
      const int hh = kLaneOutput[lane];
      if (hh < nh) scores[hh * stride + j] = dots[lane] * scale;
    }
  }
}

// out[hh * dim + d] = sum_j p[hh * stride + j] * v_j[d] (fp32, ascending j, from +0) for up to 8
// heads.
MOE_AVX2_TARGET void GroupPvAvx2(const float* p, int nh, int64_t stride, const bf16* const* vrow,
                                 int64_t context, int64_t dim, float* out) {
  for (int64_t d = 0; d < dim; d += 8) {
    __m256 acc[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t j = 0; j < context; ++j) {
      const __m256 v = Bf16x8(vrow[j] + d);
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        if (i < nh) acc[i] = _mm256_add_ps(acc[i], _mm256_mul_ps(_mm256_set1_ps(p[i * stride + j]), v));
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < nh; ++i) _mm256_storeu_ps(out + i * dim + d, acc[i]);
  }
}

struct GroupScratch {
  std::vector<float> q, scores, out;
  std::vector<const bf16*> krow, vrow;
};

// Query heads [h0, h1) of token t, all reading KV head g.
void GroupAttentionAvx2(const bf16* q, int64_t q_stride, int64_t t, int64_t start_pos, int64_t h0, int64_t h1,
                        int64_t g, float scale, const int32_t* block_table, const PagedKv& kv, bf16* out,
                        int64_t out_stride) {
  thread_local GroupScratch s;
  const int64_t dim = kv.head_dim, kv_row = kv.num_kv_heads * dim;
  const int64_t context = start_pos + t + 1, nh = h1 - h0;
  s.q.resize(nh * dim);
  s.scores.resize(nh * context);
  s.out.resize(nh * dim);
  s.krow.resize(context);
  s.vrow.resize(context);
  for (int64_t j = 0; j < context; ++j) {
    const int64_t slot =
        static_cast<int64_t>(block_table[j / kv.block_size]) * kv.block_size + j % kv.block_size;
    s.krow[j] = kv.k + slot * kv_row + g * dim;
    s.vrow[j] = kv.v + slot * kv_row + g * dim;
  }
  for (int64_t hh = 0; hh < nh; ++hh) {
    const bf16* qh = q + t * q_stride + (h0 + hh) * dim;
    for (int64_t d = 0; d < dim; ++d) s.q[hh * dim + d] = BF16ToFloat(qh[d]);
  }
  for (int64_t c = 0; c < nh; c += 8) {
    GroupScoresAvx2(s.q.data() + c * dim, static_cast<int>(std::min<int64_t>(8, nh - c)), s.krow.data(),
                    context, dim, scale, s.scores.data() + c * context, context);
  }
  // Softmax per head exactly as the scalar path: max, exp and sum in ascending j, P rounded to bf16.
  const Isa exp_isa = ActiveIsa() == Isa::kAvx512Bf16 ? Isa::kAvx512Bf16 : Isa::kAvx2Fma;
  for (int64_t hh = 0; hh < nh; ++hh) {
    float* sc = s.scores.data() + hh * context;
    float max_score = -INFINITY;
    for (int64_t j = 0; j < context; ++j) max_score = std::max(max_score, sc[j]);
    internal::SoftmaxExpRow(exp_isa, sc, context, max_score);
    float sum = 0.0f;
    for (int64_t j = 0; j < context; ++j) sum += sc[j];
    for (int64_t j = 0; j < context; ++j) sc[j] = RoundBF16(sc[j] / sum);
  }
  for (int64_t c = 0; c < nh; c += 8) {
    GroupPvAvx2(s.scores.data() + c * context, static_cast<int>(std::min<int64_t>(8, nh - c)), context,
                s.vrow.data(), context, dim, s.out.data() + c * dim);
  }
  for (int64_t hh = 0; hh < nh; ++hh) {
    bf16* o = out + t * out_stride + (h0 + hh) * dim;
    for (int64_t d = 0; d < dim; ++d) o[d] = FloatToBF16(s.out[hh * dim + d]);
  }
}

// Tiled path (what PagedAttention runs unless the portable ISA is active): one task per (KV group,
// tile of consecutive tokens). Its rows are the tile's (token, query head) pairs, token-major, so a
// row's context (keys 0..its position) grows with the row index. K and V are walked in blocks of
// kKeyBlock rows, each widened to fp32 once per tile and then read from L1 by every row of the
// tile (the per-token path widens them once per token), with AVX2 or, when the AVX-512 ISA is
// active, AVX-512 register tiles of 8 rows. Every row still sees exactly the per-token path's
// operations in the same order: its dot product keeps lane i of DotQK in lane i of its
// accumulator(s) and the Reduce16 tree, its softmax computes the same values (SoftmaxRowsAvx2),
// and its P·V accumulates from +0 in ascending j (blocks ascend; a row's partial sums are stored
// and reloaded exactly between blocks). No key past the tile's last position is read; a row's
// scores past its own position may be computed for a neighbouring row's sake but are never used,
// and P·V skips those keys for that row.
constexpr int64_t kTileRows = 64;  // rows per task at most (more when one group has more heads)
constexpr int64_t kKeyBlock = 32;  // K or V rows widened to fp32 at a time (16 KiB at head_dim 128)

// dst[(j - j0) * dim + d] = row j's element d as fp32, for j in [j0, j1).
MOE_AVX2_TARGET void WidenRows(const bf16* const* rows, int64_t j0, int64_t j1, int64_t dim, float* dst) {
  for (int64_t j = j0; j < j1; ++j) {
    for (int64_t d = 0; d < dim; d += 8) _mm256_storeu_ps(dst + (j - j0) * dim + d, Bf16x8(rows[j] + d));
  }
}

// Elements d..d+7 of key or value row j: from the tile's fp32 block (block row j - j0) or, with
// kBf16, widened straight from the paged row (a tile of one row group shares nothing).
template <bool kBf16>
MOE_AVX2_INLINE __m256 Row8(const float* block, const bf16* const* rows, int64_t j, int64_t j0, int64_t dim,
                            int64_t d) {
  if constexpr (kBf16) {
    return Bf16x8(rows[j] + d);
  } else {
    return _mm256_loadu_ps(block + (j - j0) * dim + d);
  }
}

// srow[i][j] = dot(qrow[i], key j) * scale for j in [j0, j1) and the 8 rows i whose srow[i] is
// not null (the others repeat a real row's q and are dropped); key j is kf + (j - j0) * dim.
template <bool kBf16>
MOE_AVX2_TARGET void TileScoresAvx2(const float* const* qrow, float* const* srow, const float* kf,
                                    const bf16* const* krow, int64_t j0, int64_t j1, int64_t dim,
                                    float scale) {
  for (int64_t j = j0; j < j1; ++j) {
    __m256 s8[8];
#pragma GCC unroll 2
    for (int h0 = 0; h0 < 8; h0 += 4) {
      __m256 lo[4], hi[4];
#pragma GCC unroll 8
      for (int i = 0; i < 4; ++i) {
        lo[i] = _mm256_setzero_ps();
        hi[i] = _mm256_setzero_ps();
      }
      for (int64_t d = 0; d < dim; d += 16) {
        const __m256 klo = Row8<kBf16>(kf, krow, j, j0, dim, d),
                     khi = Row8<kBf16>(kf, krow, j, j0, dim, d + 8);
#pragma GCC unroll 8
        for (int i = 0; i < 4; ++i) {
          lo[i] = _mm256_add_ps(lo[i], _mm256_mul_ps(_mm256_loadu_ps(qrow[h0 + i] + d), klo));
          hi[i] = _mm256_add_ps(hi[i], _mm256_mul_ps(_mm256_loadu_ps(qrow[h0 + i] + d + 8), khi));
        }
      }
#pragma GCC unroll 8
      for (int i = 0; i < 4; ++i) s8[h0 + i] = _mm256_add_ps(lo[i], hi[i]);
    }
    alignas(32) float dots[8];
    _mm256_store_ps(dots, Reduce8x8(s8));
#pragma GCC unroll 8
    for (int lane = 0; lane < 8; ++lane) {
      float* dst = srow[kLaneOutput[lane]];
      if (dst != nullptr) dst[j] = dots[lane] * scale;
    }
  }
}

// orow[i][d] += prow[i][j] * value j [d] for j ascending in [j0, j1), for the first nr of 8 rows
// (the others repeat row nr - 1 and are not stored); value j is vf + (j - j0) * dim. Every row
// takes all of [j0, jall); row i takes j in [jall, j1) only while j < ctx[i].
template <bool kBf16>
MOE_AVX2_TARGET void TilePvAvx2(const float* const* prow, float* const* orow, const int64_t* ctx, int nr,
                                const float* vf, const bf16* const* vrow, int64_t j0, int64_t jall,
                                int64_t j1, int64_t dim) {
  for (int64_t d = 0; d < dim; d += 8) {
    __m256 acc[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_loadu_ps(orow[i] + d);
    for (int64_t j = j0; j < jall; ++j) {
      const __m256 v = Row8<kBf16>(vf, vrow, j, j0, dim, d);
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i)
        acc[i] = _mm256_add_ps(acc[i], _mm256_mul_ps(_mm256_set1_ps(prow[i][j]), v));
    }
    for (int64_t j = jall; j < j1; ++j) {
      const __m256 v = Row8<kBf16>(vf, vrow, j, j0, dim, d);
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        if (j < ctx[i]) acc[i] = _mm256_add_ps(acc[i], _mm256_mul_ps(_mm256_set1_ps(prow[i][j]), v));
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      if (i < nr) _mm256_storeu_ps(orow[i] + d, acc[i]);
    }
  }
}

// AVX-512 forms of the two micro-kernels, used when the AVX-512 ISA is active. They add exactly
// as the AVX2 ones do: a 16-lane dot product accumulator holds lane i of DotQK in its lane i (the
// AVX2 kernel's low and high halves side by side), its two 8-lane halves are added and reduced by
// the same Reduce8x8, and P·V adds each element's products in the same ascending j.
#define MOE_AVX512_TARGET __attribute__((target("avx512f,avx2")))
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own extract helpers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

MOE_AVX512_TARGET inline __m256 SumHalves(__m512 x) {
  return _mm256_add_ps(_mm512_castps512_ps256(x),
                       _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
}

// The QK^T epilogue of the AVX-512 kernels for key j: a[i] holds row i's 16 DotQK lanes, whose
// halves are added and reduced by Reduce8x8 as in the AVX2 kernel; srow[row][j] = dot * scale for
// each row whose srow is not null.
MOE_AVX512_TARGET inline __attribute__((always_inline)) void StoreScores16(const __m512* a,
                                                                           float* const* srow, int64_t j,
                                                                           float scale) {
  __m256 s8[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) s8[i] = SumHalves(a[i]);
  alignas(32) float dots[8];
  _mm256_store_ps(dots, Reduce8x8(s8));
#pragma GCC unroll 8
  for (int lane = 0; lane < 8; ++lane) {
    float* dst = srow[kLaneOutput[lane]];
    if (dst != nullptr) dst[j] = dots[lane] * scale;
  }
}

// Row8 with 16 elements.
template <bool kBf16>
MOE_AVX512_TARGET inline __attribute__((always_inline)) __m512 Row16(const float* block,
                                                                     const bf16* const* rows, int64_t j,
                                                                     int64_t j0, int64_t dim, int64_t d) {
  if constexpr (kBf16) {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[j] + d));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
  } else {
    return _mm512_loadu_ps(block + (j - j0) * dim + d);
  }
}

// TileScoresAvx2 with 16-lane registers, two keys at a time.
template <bool kBf16>
MOE_AVX512_TARGET void TileScoresAvx512(const float* const* qrow, float* const* srow, const float* kf,
                                        const bf16* const* krow, int64_t j0, int64_t j1, int64_t dim,
                                        float scale) {
  int64_t j = j0;
  for (; j + 2 <= j1; j += 2) {
    __m512 a0[8], a1[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) a0[i] = a1[i] = _mm512_setzero_ps();
    for (int64_t d = 0; d < dim; d += 16) {
      const __m512 kv0 = Row16<kBf16>(kf, krow, j, j0, dim, d),
                   kv1 = Row16<kBf16>(kf, krow, j + 1, j0, dim, d);
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        const __m512 qv = _mm512_loadu_ps(qrow[i] + d);
        a0[i] = _mm512_add_ps(a0[i], _mm512_mul_ps(qv, kv0));
        a1[i] = _mm512_add_ps(a1[i], _mm512_mul_ps(qv, kv1));
      }
    }
    StoreScores16(a0, srow, j, scale);
    StoreScores16(a1, srow, j + 1, scale);
  }
  if (j < j1) {
    __m512 a0[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) a0[i] = _mm512_setzero_ps();
    for (int64_t d = 0; d < dim; d += 16) {
      const __m512 kv0 = Row16<kBf16>(kf, krow, j, j0, dim, d);
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i)
        a0[i] = _mm512_add_ps(a0[i], _mm512_mul_ps(_mm512_loadu_ps(qrow[i] + d), kv0));
    }
    StoreScores16(a0, srow, j, scale);
  }
}

// TilePvAvx2 with 16-lane registers, kChunks 16-element column chunks at a time.
template <bool kBf16, int kChunks>
MOE_AVX512_TARGET inline __attribute__((always_inline)) void TilePvColumns512(
    const float* const* prow, float* const* orow, const int64_t* ctx, int nr, const float* vf,
    const bf16* const* vrow, int64_t j0, int64_t jall, int64_t j1, int64_t dim, int64_t d) {
  __m512 acc[kChunks][8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
#pragma GCC unroll 2
    for (int c = 0; c < kChunks; ++c) acc[c][i] = _mm512_loadu_ps(orow[i] + d + 16 * c);
  }
  for (int64_t j = j0; j < jall; ++j) {
    __m512 v[kChunks];
#pragma GCC unroll 2
    for (int c = 0; c < kChunks; ++c) v[c] = Row16<kBf16>(vf, vrow, j, j0, dim, d + 16 * c);
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      const __m512 p = _mm512_set1_ps(prow[i][j]);
#pragma GCC unroll 2
      for (int c = 0; c < kChunks; ++c) acc[c][i] = _mm512_add_ps(acc[c][i], _mm512_mul_ps(p, v[c]));
    }
  }
  for (int64_t j = jall; j < j1; ++j) {
    __m512 v[kChunks];
#pragma GCC unroll 2
    for (int c = 0; c < kChunks; ++c) v[c] = Row16<kBf16>(vf, vrow, j, j0, dim, d + 16 * c);
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      if (j < ctx[i]) {
        const __m512 p = _mm512_set1_ps(prow[i][j]);
#pragma GCC unroll 2
        for (int c = 0; c < kChunks; ++c) acc[c][i] = _mm512_add_ps(acc[c][i], _mm512_mul_ps(p, v[c]));
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    if (i < nr) {
#pragma GCC unroll 2
      for (int c = 0; c < kChunks; ++c) _mm512_storeu_ps(orow[i] + d + 16 * c, acc[c][i]);
    }
  }
}

template <bool kBf16>
MOE_AVX512_TARGET void TilePvAvx512(const float* const* prow, float* const* orow, const int64_t* ctx, int nr,
                                    const float* vf, const bf16* const* vrow, int64_t j0, int64_t jall,
                                    int64_t j1, int64_t dim) {
  int64_t d = 0;
  for (; d + 32 <= dim; d += 32)
    TilePvColumns512<kBf16, 2>(prow, orow, ctx, nr, vf, vrow, j0, jall, j1, dim, d);
  if (d < dim) TilePvColumns512<kBf16, 1>(prow, orow, ctx, nr, vf, vrow, j0, jall, j1, dim, d);
}
// SoftmaxExp on 16 lanes (attention_internal.h): the same operations in the same order.
MOE_AVX512_TARGET inline __attribute__((always_inline)) __m512 Exp16(__m512 x) {
  const __m512 t = _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(kExpLog2e)), _mm512_set1_ps(kExpRound));
  const __m512 n = _mm512_sub_ps(t, _mm512_set1_ps(kExpRound));
  __m512 r = _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(kExpLn2Hi)));
  r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(kExpLn2Lo)));
  __m512 q = _mm512_set1_ps(kExpQ4);
  q = _mm512_add_ps(_mm512_mul_ps(q, r), _mm512_set1_ps(kExpQ3));
  q = _mm512_add_ps(_mm512_mul_ps(q, r), _mm512_set1_ps(kExpQ2));
  q = _mm512_add_ps(_mm512_mul_ps(q, r), _mm512_set1_ps(kExpQ1));
  q = _mm512_add_ps(_mm512_mul_ps(q, r), _mm512_set1_ps(kExpQ0));
  const __m512 p =
      _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(q, _mm512_mul_ps(r, r)), r), _mm512_set1_ps(1.0f));
  const __m512i scale =
      _mm512_slli_epi32(_mm512_add_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(127)), 23);
  const __m512 e = _mm512_mul_ps(p, _mm512_castsi512_ps(scale));
  return _mm512_mask_mov_ps(e, _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpMin), _CMP_LT_OQ),
                            _mm512_setzero_ps());
}

MOE_AVX512_TARGET void SoftmaxExpRowAvx512(float* x, int64_t n, float shift) {
  const __m512 s16 = _mm512_set1_ps(shift);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) _mm512_storeu_ps(x + j, Exp16(_mm512_sub_ps(_mm512_loadu_ps(x + j), s16)));
  if (j < n) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (n - j)) - 1);
    _mm512_mask_storeu_ps(x + j, tail, Exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, x + j), s16)));
  }
}

// Rows ahead whose cache lines WidenRows asks for (the paged rows are scattered).
constexpr int64_t kPrefetchRows = 4;

// WidenRows 16 elements at a time (head_dim % 16 == 0).
MOE_AVX512_TARGET void WidenRowsAvx512(const bf16* const* rows, int64_t j0, int64_t j1, int64_t dim,
                                       float* dst) {
  for (int64_t j = j0; j < j1; ++j) {
    if (j + kPrefetchRows < j1) {
      for (int64_t d = 0; d < dim; d += 32)
        _mm_prefetch(reinterpret_cast<const char*>(rows[j + kPrefetchRows] + d), _MM_HINT_T0);
    }
    for (int64_t d = 0; d < dim; d += 16) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[j] + d));
      _mm512_storeu_ps(dst + (j - j0) * dim + d,
                       _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16)));
    }
  }
}

// QK^T on VDPBF16PS (the AVX-512 BF16 ISA, head_dim % 32 == 0), with DotQK's bits. Per 16-bit lane
// pair, VDPBF16PS adds the product of the odd words first, then that of the even words, each add
// rounded to fp32 (RNE) and the products of two bf16 values exact in fp32; it also flushes
// subnormal inputs and results to zero. q rows and key rows are stored permuted per 32-element
// chunk c (DpPermute): word 2i+1 holds element 32c+i, word 2i holds element 32c+16+i, so lane i
// adds q[d]*k[d] for d = i, i+16, i+32, ... ascending, exactly DotQK's lane i. Flushing cannot act
// when no input is subnormal and every nonzero product is a multiple of 2^-126 (then every partial
// sum is too: a nonzero one is normal); a nonzero bf16 with exponent field e >= 1 is a multiple of
// 2^(e-134), so it suffices that the smallest nonzero exponent fields of the 8 q rows and of the key
// block are >= 1 and add up to >= 142. With no Inf/NaN (field 255) and fields adding up to <= 380,
// every product is below 2^128, finite and exact. A (row group, key block) that fails the test runs
// the fp32 kernel on the widened block instead (DpRangeOk).
#define MOE_AVX512BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16,avx2")))

// Smallest exponent field over the nonzero words and largest over all words, of 16-bit words.
struct ExpRange {
  int min = 255, max = 0;
};

// dst = src's n words (n % 32 == 0) permuted per 32-word chunk as above; widens range by theirs.
MOE_AVX512BF16_TARGET void DpPermute(const bf16* src, int64_t n, uint16_t* dst, ExpRange* range) {
  alignas(64) static constexpr uint16_t kIndex[32] = {16, 0,  17, 1,  18, 2,  19, 3,  20, 4,  21,
                                                      5,  22, 6,  23, 7,  24, 8,  25, 9,  26, 10,
                                                      27, 11, 28, 12, 29, 13, 30, 14, 31, 15};
  const __m512i index = _mm512_load_si512(kIndex);
  __m512i lo = _mm512_set1_epi16(255), hi = _mm512_setzero_si512();
  for (int64_t d = 0; d < n; d += 32) {
    const __m512i w = _mm512_loadu_si512(src + d);
    _mm512_storeu_si512(dst + d, _mm512_permutexvar_epi16(index, w));
    const __m512i e = _mm512_srli_epi16(_mm512_and_si512(w, _mm512_set1_epi16(0x7f80)), 7);
    const __mmask32 nonzero = _mm512_test_epi16_mask(w, _mm512_set1_epi16(0x7fff));
    lo = _mm512_mask_min_epu16(lo, nonzero, lo, e);
    hi = _mm512_max_epu16(hi, e);
  }
  alignas(64) uint16_t l[32], h[32];
  _mm512_store_si512(l, lo);
  _mm512_store_si512(h, hi);
  for (int i = 0; i < 32; ++i) {
    range->min = std::min<int>(range->min, l[i]);
    range->max = std::max<int>(range->max, h[i]);
  }
}

// Whether VDPBF16PS gives exact products and never flushes, for q and keys with these ranges.
inline bool DpRangeOk(const ExpRange& q, const ExpRange& k) {
  return q.min >= 1 && k.min >= 1 && q.min + k.min >= 142 && q.max < 255 && k.max < 255 &&
         q.max + k.max <= 380;
}

// TileScoresAvx512 on VDPBF16PS: q rows qrow[i] and key j at kp + (j - j0) * dim, permuted.
MOE_AVX512BF16_TARGET void TileScoresDp512(const uint16_t* const* qrow, float* const* srow,
                                           const uint16_t* kp, int64_t j0, int64_t j1, int64_t dim,
                                           float scale) {
  int64_t j = j0;
  for (; j + 2 <= j1; j += 2) {
    __m512 a0[8], a1[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) a0[i] = a1[i] = _mm512_setzero_ps();
    const uint16_t* k0 = kp + (j - j0) * dim;
    for (int64_t d = 0; d < dim; d += 32) {
      const __m512bh kv0 = (__m512bh)_mm512_loadu_si512(k0 + d),
                     kv1 = (__m512bh)_mm512_loadu_si512(k0 + dim + d);
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        const __m512bh qv = (__m512bh)_mm512_loadu_si512(qrow[i] + d);
        a0[i] = _mm512_dpbf16_ps(a0[i], qv, kv0);
        a1[i] = _mm512_dpbf16_ps(a1[i], qv, kv1);
      }
    }
    StoreScores16(a0, srow, j, scale);
    StoreScores16(a1, srow, j + 1, scale);
  }
  if (j < j1) {
    __m512 a0[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) a0[i] = _mm512_setzero_ps();
    const uint16_t* k0 = kp + (j - j0) * dim;
    for (int64_t d = 0; d < dim; d += 32) {
      const __m512bh kv0 = (__m512bh)_mm512_loadu_si512(k0 + d);
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i)
        a0[i] = _mm512_dpbf16_ps(a0[i], (__m512bh)_mm512_loadu_si512(qrow[i] + d), kv0);
    }
    StoreScores16(a0, srow, j, scale);
  }
}

// P·V on VDPBF16PS, with the fp32 kernel's bits: lane d of a register adds P_j * v_j[d] (odd words)
// then P_{j+1} * v_{j+1}[d] (even words), i.e. ascending j. Value rows j, j+1 of a block are stored
// interleaved per element (DpInterleaveRows: pair p = (j0 + 2p, j0 + 2p + 1) at vi + p * 2 * dim,
// word 2d+1 = v_j[d], word 2d = v_{j+1}[d], a missing row as zeros), and a row's P as bf16 words
// that are 0 past its own position, so the keys past it add +0 and leave the sum as it is (an
// accumulator that starts at +0 never becomes -0). The flushing argument is QK^T's, with P for q:
// each (row group, block) is checked (DpRangeOk), and once a group falls back to the fp32 kernel it
// stays there for the later blocks (its partial sums need no longer be multiples of 2^-126).

// Value rows [j0, j1) of `rows` interleaved in pairs into dst; returns their exponent range.
MOE_AVX512BF16_TARGET ExpRange DpInterleaveRows(const bf16* const* rows, int64_t j0, int64_t j1, int64_t dim,
                                                uint16_t* dst) {
  alignas(64) static constexpr uint16_t kLo[32] = {32, 0,  33, 1,  34, 2,  35, 3,  36, 4,  37,
                                                   5,  38, 6,  39, 7,  40, 8,  41, 9,  42, 10,
                                                   43, 11, 44, 12, 45, 13, 46, 14, 47, 15};
  alignas(64) static constexpr uint16_t kHi[32] = {48, 16, 49, 17, 50, 18, 51, 19, 52, 20, 53,
                                                   21, 54, 22, 55, 23, 56, 24, 57, 25, 58, 26,
                                                   59, 27, 60, 28, 61, 29, 62, 30, 63, 31};
  const __m512i lo_index = _mm512_load_si512(kLo), hi_index = _mm512_load_si512(kHi);
  __m512i lo = _mm512_set1_epi16(255), hi = _mm512_setzero_si512();
  for (int64_t j = j0; j < j1; j += 2) {
    if (j + kPrefetchRows < j1) {
      for (int64_t d = 0; d < dim; d += 32) {
        _mm_prefetch(reinterpret_cast<const char*>(rows[j + kPrefetchRows] + d), _MM_HINT_T0);
        if (j + kPrefetchRows + 1 < j1)
          _mm_prefetch(reinterpret_cast<const char*>(rows[j + kPrefetchRows + 1] + d), _MM_HINT_T0);
      }
    }
    uint16_t* pair = dst + (j - j0) * dim;  // (j - j0) / 2 pairs of 2 * dim words
    for (int64_t d = 0; d < dim; d += 32) {
      const __m512i a = _mm512_loadu_si512(rows[j] + d);
      const __m512i b = j + 1 < j1 ? _mm512_loadu_si512(rows[j + 1] + d) : _mm512_setzero_si512();
      _mm512_storeu_si512(pair + 2 * d, _mm512_permutex2var_epi16(a, lo_index, b));
      _mm512_storeu_si512(pair + 2 * d + 32, _mm512_permutex2var_epi16(a, hi_index, b));
#pragma GCC unroll 2
      for (const __m512i w : {a, b}) {
        const __m512i e = _mm512_srli_epi16(_mm512_and_si512(w, _mm512_set1_epi16(0x7f80)), 7);
        lo = _mm512_mask_min_epu16(lo, _mm512_test_epi16_mask(w, _mm512_set1_epi16(0x7fff)), lo, e);
        hi = _mm512_max_epu16(hi, e);
      }
    }
  }
  alignas(64) uint16_t l[32], h[32];
  _mm512_store_si512(l, lo);
  _mm512_store_si512(h, hi);
  ExpRange range;
  for (int i = 0; i < 32; ++i) {
    range.min = std::min<int>(range.min, l[i]);
    range.max = std::max<int>(range.max, h[i]);
  }
  return range;
}

// P_j for j in [0, n) (n <= 32; fp32 values already rounded to bf16, so taking their high words is
// exact) as 32 bf16 words with each pair swapped (word j ^ 1 = P_j) and zeros from n on; returns
// their exponent range.
MOE_AVX512BF16_TARGET ExpRange DpPackP(const float* p, int64_t n, uint16_t* dst) {
  // Output word 2i+1 = the high word of float 2i (input word 4i+1), word 2i = that of float 2i+1.
  alignas(64) static constexpr uint16_t kIndex[32] = {3,  1,  7,  5,  11, 9,  15, 13, 19, 17, 23,
                                                      21, 27, 25, 31, 29, 35, 33, 39, 37, 43, 41,
                                                      47, 45, 51, 49, 55, 53, 59, 57, 63, 61};
  const __mmask16 m0 = static_cast<__mmask16>(n >= 16 ? 0xffff : (1u << n) - 1),
                  m1 = static_cast<__mmask16>(n >= 32   ? 0xffff
                                              : n <= 16 ? 0
                                                        : (1u << (n - 16)) - 1);
  const __m512i a = _mm512_maskz_loadu_epi32(m0, p), b = _mm512_maskz_loadu_epi32(m1, p + 16);
  const __m512i w = _mm512_permutex2var_epi16(a, _mm512_load_si512(kIndex), b);
  _mm512_storeu_si512(dst, w);
  const __m512i e = _mm512_srli_epi16(_mm512_and_si512(w, _mm512_set1_epi16(0x7f80)), 7);
  const __m512i lo =
      _mm512_mask_min_epu16(_mm512_set1_epi16(255), _mm512_test_epi16_mask(w, _mm512_set1_epi16(0x7fff)),
                            _mm512_set1_epi16(255), e);
  alignas(64) uint16_t l[32], h[32];
  _mm512_store_si512(l, lo);
  _mm512_store_si512(h, e);
  ExpRange range;
  for (int i = 0; i < 32; ++i) {
    range.min = std::min<int>(range.min, l[i]);
    range.max = std::max<int>(range.max, h[i]);
  }
  return range;
}

// orow[i][d] += P_i[j] * value j [d] for j ascending in [j0, j1) (j0 even), for the first nr of 8
// rows; prow[i] holds row i's P as bf16 words, each pair's two words swapped (word j ^ 1 = P_j, so
// the dword at j is VDPBF16PS's pair), 0 past its position, readable up to j1 rounded up to even;
// vi holds the block's interleaved value pairs.
MOE_AVX512BF16_TARGET void TilePvDp512(const uint16_t* const* prow, float* const* orow, int nr,
                                       const uint16_t* vi, int64_t j0, int64_t j1, int64_t dim) {
  for (int64_t d = 0; d < dim; d += 32) {
    __m512 acc[2][8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      acc[0][i] = _mm512_loadu_ps(orow[i] + d);
      acc[1][i] = _mm512_loadu_ps(orow[i] + d + 16);
    }
    for (int64_t j = j0; j < j1; j += 2) {
      const uint16_t* pair = vi + (j - j0) * dim + 2 * d;
      const __m512bh v0 = (__m512bh)_mm512_loadu_si512(pair), v1 = (__m512bh)_mm512_loadu_si512(pair + 32);
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        int32_t w;  // P_j (high word), P_{j+1} (low word)
        std::memcpy(&w, prow[i] + j, sizeof(w));
        const __m512bh p = (__m512bh)_mm512_set1_epi32(w);
        acc[0][i] = _mm512_dpbf16_ps(acc[0][i], p, v0);
        acc[1][i] = _mm512_dpbf16_ps(acc[1][i], p, v1);
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      if (i < nr) {
        _mm512_storeu_ps(orow[i] + d, acc[0][i]);
        _mm512_storeu_ps(orow[i] + d + 16, acc[1][i]);
      }
    }
  }
}
#pragma GCC diagnostic pop

// RoundBF16 of 8 floats: round to nearest even, a NaN keeps its payload's top bits and turns quiet
// (FloatToBF16 then BF16ToFloat, lane by lane).
MOE_AVX2_INLINE __m256 RoundBf16x8(__m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded =
      _mm256_and_si256(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), high);
  const __m256i quiet = _mm256_and_si256(_mm256_or_si256(u, _mm256_set1_epi32(0x400000)), high);
  const __m256i nan =
      _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
  return _mm256_castsi256_ps(_mm256_blendv_epi8(rounded, quiet, nan));
}

// The scalar path's softmax of the first nr of 8 rows (row i holds n[i] scores; the others repeat
// row nr - 1 and are left alone): max_score, then e_j = SoftmaxExp(s_j - max_score) and their sum
// in ascending j from +0, then P_j = RoundBF16(e_j / sum), all in place. The max is taken 8 lanes at
// a time, which gives the same value (std::max and MAX_PS both skip a NaN score here, and a -0/+0
// choice does not change any s_j - max_score's exp); the exps run 8 (AVX2) or 16 (avx512) lanes at
// a time with SoftmaxExp's bits; the sums of the rows run interleaved, each still in ascending j;
// division and rounding are exact per element in any width.
MOE_AVX2_TARGET void SoftmaxRowsAvx2(bool avx512, float* const* rows, const int64_t* n, int nr) {
  float max_score[8], sum[8];
  for (int i = 0; i < nr; ++i) {
    const float* sc = rows[i];
    __m256 m8 = _mm256_set1_ps(-INFINITY);
    int64_t j = 0;
    for (; j + 8 <= n[i]; j += 8) m8 = _mm256_max_ps(_mm256_loadu_ps(sc + j), m8);
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, m8);
    float m = -INFINITY;
    for (float x : lanes) m = std::max(m, x);
    for (; j < n[i]; ++j) m = std::max(m, sc[j]);
    max_score[i] = m;
  }
  for (int i = 0; i < nr; ++i)
    (avx512 ? SoftmaxExpRowAvx512 : SoftmaxExpRowAvx2)(rows[i], n[i], max_score[i]);
  int64_t common = n[0];
  for (int i = 0; i < 8; ++i) {
    sum[i] = 0.0f;
    common = std::min(common, n[i]);
  }
  for (int64_t j = 0; j < common; ++j) {
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) sum[i] += rows[i][j];
  }
  for (int i = 0; i < nr; ++i) {
    for (int64_t j = common; j < n[i]; ++j) sum[i] += rows[i][j];
  }
  for (int i = 0; i < nr; ++i) {
    float* sc = rows[i];
    const __m256 s8 = _mm256_set1_ps(sum[i]);
    int64_t j = 0;
    for (; j + 8 <= n[i]; j += 8)
      _mm256_storeu_ps(sc + j, RoundBf16x8(_mm256_div_ps(_mm256_loadu_ps(sc + j), s8)));
    for (; j < n[i]; ++j) sc[j] = RoundBF16(sc[j] / sum[i]);
  }
}

struct TileScratch {
  std::vector<float> q, scores, out, block;
  std::vector<int64_t> ctx;
  std::vector<const bf16*> krow, vrow;
  std::vector<uint16_t> qp, kp;  // q rows and a key block in the VDPBF16PS order (DpPermute)
  std::vector<ExpRange> qrange;  // per group of 8 rows, of their q
  std::vector<uint16_t> pb, vi;  // rows' P as bf16 (0 past their positions); a value block in pairs
  std::vector<ExpRange> prange;  // per (group of 8 rows, value block), of their P
  std::vector<char> pv_fp32;     // per group of 8 rows: fell back to the fp32 P·V kernel
};

// K rows [j0, j1) of `rows` permuted into dst (DpPermute); returns their exponent range.
MOE_AVX512BF16_TARGET ExpRange DpPermuteRows(const bf16* const* rows, int64_t j0, int64_t j1, int64_t dim,
                                             uint16_t* dst) {
  ExpRange range;
  for (int64_t j = j0; j < j1; ++j) {
    if (j + kPrefetchRows < j1) {
      for (int64_t d = 0; d < dim; d += 32)
        _mm_prefetch(reinterpret_cast<const char*>(rows[j + kPrefetchRows] + d), _MM_HINT_T0);
    }
    DpPermute(rows[j], dim, dst + (j - j0) * dim, &range);
  }
  return range;
}

// Tokens [t0, t1) and query heads [h0, h1), all reading KV head g. avx512: the AVX-512 kernels;
// dp (with avx512, an AVX-512 BF16 CPU and head_dim % 32 == 0): QK^T and P·V on VDPBF16PS where
// DpRangeOk.
void TiledAttention(bool avx512, bool dp, const bf16* q, int64_t q_stride, int64_t t0, int64_t t1,
                    int64_t start_pos, int64_t h0, int64_t h1, int64_t g, float scale,
                    const int32_t* block_table, const PagedKv& kv, bf16* out, int64_t out_stride) {
  thread_local TileScratch s;
  const int64_t dim = kv.head_dim, kv_row = kv.num_kv_heads * dim;
  const int64_t nh = h1 - h0, rows = (t1 - t0) * nh;
  const int64_t context = start_pos + t1;  // the last token's
  s.q.resize(rows * dim);
  s.scores.resize(rows * context);
  s.out.assign(rows * dim, 0.0f);
  s.block.resize(kKeyBlock * dim);
  // One row group (decode): nothing to share, so the kernels read the paged rows directly.
  const bool direct = rows <= 8;
  s.ctx.resize(rows);
  s.krow.resize(context);
  s.vrow.resize(context);
  for (int64_t j = 0; j < context; ++j) {
    const int64_t slot =
        static_cast<int64_t>(block_table[j / kv.block_size]) * kv.block_size + j % kv.block_size;
    s.krow[j] = kv.k + slot * kv_row + g * dim;
    s.vrow[j] = kv.v + slot * kv_row + g * dim;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = t0 + r / nh;
    const bf16* qh = q + t * q_stride + (h0 + r % nh) * dim;
    for (int64_t d = 0; d < dim; ++d) s.q[r * dim + d] = BF16ToFloat(qh[d]);
    s.ctx[r] = start_pos + t + 1;
  }
  dp = dp && !direct;
  if (dp) {
    s.qp.resize(rows * dim);
    s.kp.resize(kKeyBlock * dim);
    s.qrange.assign((rows + 7) / 8, ExpRange{});
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t t = t0 + r / nh;
      DpPermute(q + t * q_stride + (h0 + r % nh) * dim, dim, s.qp.data() + r * dim, &s.qrange[r / 8]);
    }
  }
  const uint16_t* qprow[8];
  const float* qrow[8];
  float* srow[8];
  const float* prow[8];
  float* orow[8];
  int64_t ctx8[8];
  for (int64_t jb = 0; jb < context; jb += kKeyBlock) {
    const int64_t je = std::min(context, jb + kKeyBlock);
    // The block's keys in the VDPBF16PS order, and widened to fp32 only once a row group needs it.
    ExpRange krange;
    if (dp) krange = DpPermuteRows(s.krow.data(), jb, je, dim, s.kp.data());
    bool widened = false;
    if (!direct && !dp) {
      (avx512 ? WidenRowsAvx512 : WidenRows)(s.krow.data(), jb, je, dim, s.block.data());
      widened = true;
    }
    for (int64_t r0 = 0; r0 < rows; r0 += 8) {
      const int64_t nr = std::min<int64_t>(8, rows - r0);
      const int64_t j1 = std::min(je, s.ctx[r0 + nr - 1]);
      if (j1 <= jb) continue;
      for (int64_t i = 0; i < 8; ++i) {
        const int64_t r = r0 + std::min(i, nr - 1);
        qrow[i] = s.q.data() + r * dim;
        qprow[i] = dp ? s.qp.data() + r * dim : nullptr;
        srow[i] = i < nr ? s.scores.data() + r * context : nullptr;
      }
      if (dp && DpRangeOk(s.qrange[r0 / 8], krange)) {
        TileScoresDp512(qprow, srow, s.kp.data(), jb, j1, dim, scale);
        continue;
      }
      if (!direct && !widened) {
        WidenRowsAvx512(s.krow.data(), jb, je, dim, s.block.data());
        widened = true;
      }
      if (avx512) {
        (direct ? TileScoresAvx512<true> : TileScoresAvx512<false>)(qrow, srow, s.block.data(), s.krow.data(),
                                                                    jb, j1, dim, scale);
      } else {
        (direct ? TileScoresAvx2<true> : TileScoresAvx2<false>)(qrow, srow, s.block.data(), s.krow.data(), jb,
                                                                j1, dim, scale);
      }
    }
  }
  for (int64_t r0 = 0; r0 < rows; r0 += 8) {
    const int64_t nr = std::min<int64_t>(8, rows - r0);
    for (int64_t i = 0; i < 8; ++i) {
      const int64_t r = r0 + std::min(i, nr - 1);
      srow[i] = s.scores.data() + r * context;
      ctx8[i] = s.ctx[r];
    }
    SoftmaxRowsAvx2(avx512, srow, ctx8, static_cast<int>(nr));
  }
  // P as bf16 words (exact: already rounded) and their exponent ranges, for P·V on VDPBF16PS.
  const int64_t num_blocks = (context + kKeyBlock - 1) / kKeyBlock, pstride = num_blocks * kKeyBlock;
  if (dp) {
    s.pb.resize(rows * pstride);
    s.vi.resize(kKeyBlock * dim);
    s.prange.assign(((rows + 7) / 8) * num_blocks, ExpRange{});
    s.pv_fp32.assign((rows + 7) / 8, 0);
    for (int64_t r = 0; r < rows; ++r) {
      const float* sc = s.scores.data() + r * context;
      uint16_t* pw = s.pb.data() + r * pstride;
      ExpRange* range = s.prange.data() + (r / 8) * num_blocks;
      for (int64_t jb = 0; jb < pstride; jb += kKeyBlock) {
        const ExpRange br = DpPackP(sc + jb, std::clamp<int64_t>(s.ctx[r] - jb, 0, kKeyBlock), pw + jb);
        ExpRange& g = range[jb / kKeyBlock];
        g.min = std::min(g.min, br.min);
        g.max = std::max(g.max, br.max);
      }
    }
  }
  const uint16_t* pbrow[8];
  for (int64_t jb = 0; jb < context; jb += kKeyBlock) {
    const int64_t je = std::min(context, jb + kKeyBlock);
    ExpRange vrange;
    if (dp) vrange = DpInterleaveRows(s.vrow.data(), jb, je, dim, s.vi.data());
    bool widened = false;
    if (!direct && !dp) {
      (avx512 ? WidenRowsAvx512 : WidenRows)(s.vrow.data(), jb, je, dim, s.block.data());
      widened = true;
    }
    for (int64_t r0 = 0; r0 < rows; r0 += 8) {
      const int64_t nr = std::min<int64_t>(8, rows - r0);
      const int64_t j1 = std::min(je, s.ctx[r0 + nr - 1]);
      if (j1 <= jb) continue;
      const int64_t jall = std::clamp(s.ctx[r0], jb, j1);
      for (int64_t i = 0; i < 8; ++i) {
        const int64_t r = r0 + std::min(i, nr - 1);
        prow[i] = s.scores.data() + r * context;
        pbrow[i] = dp ? s.pb.data() + r * pstride : nullptr;
        orow[i] = s.out.data() + r * dim;
        ctx8[i] = s.ctx[r];
      }
      if (dp && !s.pv_fp32[r0 / 8]) {
        if (DpRangeOk(s.prange[(r0 / 8) * num_blocks + jb / kKeyBlock], vrange)) {
          TilePvDp512(pbrow, orow, static_cast<int>(nr), s.vi.data(), jb, j1, dim);
          continue;
        }
        s.pv_fp32[r0 / 8] = 1;
      }
      if (!direct && !widened) {
        WidenRowsAvx512(s.vrow.data(), jb, je, dim, s.block.data());
        widened = true;
      }
      if (avx512) {
        (direct ? TilePvAvx512<true> : TilePvAvx512<false>)(prow, orow, ctx8, static_cast<int>(nr),
                                                            s.block.data(), s.vrow.data(), jb, jall, j1, dim);
      } else {
        (direct ? TilePvAvx2<true> : TilePvAvx2<false>)(prow, orow, ctx8, static_cast<int>(nr),
                                                        s.block.data(), s.vrow.data(), jb, jall, j1, dim);
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    bf16* o = out + (t0 + r / nh) * out_stride + (h0 + r % nh) * dim;
    for (int64_t d = 0; d < dim; ++d) o[d] = FloatToBF16(s.out[r * dim + d]);
  }
}
#endif  // MOE_ATTENTION_AVX2

}  // namespace

void WriteKv(const bf16* k, int64_t k_stride, const bf16* v, int64_t v_stride, int64_t num_tokens,
             int64_t start_pos, const int32_t* block_table, const PagedKv& kv) {
  const int64_t row = kv.num_kv_heads * kv.head_dim;
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int64_t pos = start_pos + t;
    const int64_t slot =
        static_cast<int64_t>(block_table[pos / kv.block_size]) * kv.block_size + pos % kv.block_size;
    std::memcpy(kv.k + slot * row, k + t * k_stride, static_cast<size_t>(row) * sizeof(bf16));
    std::memcpy(kv.v + slot * row, v + t * v_stride, static_cast<size_t>(row) * sizeof(bf16));
  }
}

namespace internal {

void SoftmaxExpRow(Isa isa, float* x, int64_t n, float shift) {
#if MOE_ATTENTION_AVX2
  if (isa == Isa::kAvx512Bf16) return SoftmaxExpRowAvx512(x, n, shift);
  if (isa == Isa::kAvx2Fma) return SoftmaxExpRowAvx2(x, n, shift);
#else
  (void)isa;
#endif
  for (int64_t j = 0; j < n; ++j) x[j] = SoftmaxExp(x[j] - shift);
}

void PagedAttentionWithPath(AttentionPath path, const bf16* q, int64_t q_stride, int64_t num_tokens,
                            int64_t start_pos, int64_t num_heads, float scale, const int32_t* block_table,
                            const PagedKv& kv, bf16* out, int64_t out_stride) {
  if (num_tokens <= 0 || num_heads <= 0 || kv.num_kv_heads <= 0) return;
  const int64_t dim = kv.head_dim;
  const int64_t group = std::max<int64_t>(1, num_heads / kv.num_kv_heads);
  const int64_t kv_row = kv.num_kv_heads * dim;
  if (path == AttentionPath::kAuto) {
    path = ActiveIsa() == Isa::kPortable ? AttentionPath::kScalar : AttentionPath::kTiled;
  }
#if MOE_ATTENTION_AVX2
  const int64_t num_groups = (num_heads + group - 1) / group;
  if (path != AttentionPath::kScalar && dim % 16 == 0 && CpuSupports(Isa::kAvx2Fma)) {
    ThreadPool& pool = ThreadPool::Current();
    if (path == AttentionPath::kTiled || path == AttentionPath::kTiledFp32) {
      // Tiles of up to kTileRows rows, halved while that leaves fewer than 4 tasks per thread.
      // Each task owns its rows' output vectors, and a row's bits do not depend on its tile.
      int64_t tile = std::max<int64_t>(1, kTileRows / group);
      while (tile > 1 && num_groups * ((num_tokens + tile - 1) / tile) < 4 * pool.num_threads()) tile /= 2;
      const int64_t num_tiles = (num_tokens + tile - 1) / tile;
      const bool avx512 = ActiveIsa() == Isa::kAvx512Bf16;  // implies AVX-512 F, BW and BF16
      const bool dp = avx512 && path == AttentionPath::kTiled && dim % 32 == 0;
      pool.ParallelFor(num_groups * num_tiles, [&](int64_t task) {
        // The last tiles have the longest contexts: hand them out first.
        const int64_t tt = num_tiles - 1 - task / num_groups, g = task % num_groups;
        TiledAttention(avx512, dp, q, q_stride, tt * tile, std::min(num_tokens, (tt + 1) * tile), start_pos,
                       g * group, std::min(num_heads, (g + 1) * group), g, scale, block_table, kv, out,
                       out_stride);
      });
      return;
    }
    // One task per (token, KV group): each owns its heads' output vectors.
    pool.ParallelFor(num_tokens * num_groups, [&](int64_t task) {
      const int64_t t = task / num_groups, g = task % num_groups;
      GroupAttentionAvx2(q, q_stride, t, start_pos, g * group, std::min(num_heads, (g + 1) * group), g, scale,
                         block_table, kv, out, out_stride);
    });
    return;
  }
#endif
  // One task per (token, head): each owns one output vector, so the thread count cannot change it.
  ThreadPool::Current().ParallelFor(num_tokens * num_heads, [&](int64_t task) {
    const int64_t t = task / num_heads, h = task % num_heads;
    const int64_t g = h / group;
    const int64_t context = start_pos + t + 1;
    AttentionScratch& s = Scratch();
    if (s.scores.size() < static_cast<size_t>(context)) s.scores.resize(context);
    s.q.resize(dim);
    s.out.assign(dim, 0.0f);
    const bf16* qh = q + t * q_stride + h * dim;
    for (int64_t d = 0; d < dim; ++d) s.q[d] = BF16ToFloat(qh[d]);

    float max_score = -INFINITY;
    for (int64_t j = 0; j < context; ++j) {
      const int64_t slot =
          static_cast<int64_t>(block_table[j / kv.block_size]) * kv.block_size + j % kv.block_size;
      const float score = DotQK(s.q.data(), kv.k + slot * kv_row + g * dim, dim) * scale;
      s.scores[j] = score;
      max_score = std::max(max_score, score);
    }
    float sum = 0.0f;  // ascending j
    for (int64_t j = 0; j < context; ++j) {
      s.scores[j] = SoftmaxExp(s.scores[j] - max_score);
      sum += s.scores[j];
    }
    for (int64_t j = 0; j < context; ++j) {
      const float p = RoundBF16(s.scores[j] / sum);
      const int64_t slot =
          static_cast<int64_t>(block_table[j / kv.block_size]) * kv.block_size + j % kv.block_size;
      AccumulatePV(p, kv.v + slot * kv_row + g * dim, dim, s.out.data());
    }
    bf16* o = out + t * out_stride + h * dim;
    for (int64_t d = 0; d < dim; ++d) o[d] = FloatToBF16(s.out[d]);
  });
}

}  // namespace internal

void PagedAttention(const bf16* q, int64_t q_stride, int64_t num_tokens, int64_t start_pos, int64_t num_heads,
                    float scale, const int32_t* block_table, const PagedKv& kv, bf16* out,
                    int64_t out_stride) {
  internal::PagedAttentionWithPath(internal::AttentionPath::kAuto, q, q_stride, num_tokens, start_pos,
                                   num_heads, scale, block_table, kv, out, out_stride);
}

}  // namespace moe::kernels::cpu
