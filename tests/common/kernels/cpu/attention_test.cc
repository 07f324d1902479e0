#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "common/kernels/cpu/attention_internal.h"
#include "common/kernels/cpu/cpu_features.h"
#include "common/kernels/cpu/kernels.h"
#include "common/kernels/cpu/thread_pool.h"
#include "gtest/gtest.h"
#include "tests/common/kernels/cpu/test_util.h"

namespace moe::kernels::cpu {
namespace {

using testing::FirstDifference;
using testing::RandomBf16;

// A paged cache whose blocks are handed out in a scrambled order.
struct TestCache {
  TestCache(int64_t num_blocks, int64_t block_size, int64_t kv_heads, int64_t head_dim, uint32_t seed)
      : k(num_blocks * block_size * kv_heads * head_dim), v(k.size()), table(num_blocks) {
    kv = PagedKv{k.data(), v.data(), block_size, kv_heads, head_dim};
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), std::mt19937(seed));
  }
  std::vector<bf16> k, v;
  std::vector<int32_t> table;
  PagedKv kv;
};

TEST(WriteKvTest, WritesSlotsThroughBlockTable) {
  const int64_t block_size = 3, kv_heads = 2, dim = 4, row = kv_heads * dim;
  TestCache cache(4, block_size, kv_heads, dim, 1);
  const std::vector<bf16> k = RandomBf16(5 * row, 2), v = RandomBf16(5 * row, 3);
  WriteKv(k.data(), row, v.data(), row, 5, /*start_pos=*/4, cache.table.data(), cache.kv);
  for (int64_t t = 0; t < 5; ++t) {
    const int64_t pos = 4 + t;
    const int64_t slot = cache.table[pos / block_size] * block_size + pos % block_size;
    for (int64_t i = 0; i < row; ++i) {
      EXPECT_EQ(cache.k[slot * row + i].bits, k[t * row + i].bits);
      EXPECT_EQ(cache.v[slot * row + i].bits, v[t * row + i].bits);
    }
  }
  // Positions 0..3 were not written.
  for (int64_t pos = 0; pos < 4; ++pos) {
    const int64_t slot = cache.table[pos / block_size] * block_size + pos % block_size;
    for (int64_t i = 0; i < row; ++i) EXPECT_EQ(cache.k[slot * row + i].bits, 0);
  }
}

// Naive attention in double over the logical (unpaged) sequence, with P rounded to bf16 as the
// kernel contract says.
std::vector<double> ReferenceAttention(const bf16* q, const std::vector<bf16>& keys,
                                       const std::vector<bf16>& values, int64_t pos, int64_t kv_heads,
                                       int64_t dim, int64_t kv_head, float scale) {
  std::vector<double> s(pos + 1);
  double max_s = -INFINITY;
  for (int64_t j = 0; j <= pos; ++j) {
    double dot = 0;
    for (int64_t d = 0; d < dim; ++d)
      dot += static_cast<double>(BF16ToFloat(q[d])) * BF16ToFloat(keys[(j * kv_heads + kv_head) * dim + d]);
    s[j] = dot * scale;
    max_s = std::max(max_s, s[j]);
  }
  double sum = 0;
  for (double& x : s) sum += (x = std::exp(x - max_s));
  std::vector<double> out(dim, 0.0);
  for (int64_t j = 0; j <= pos; ++j) {
    const double p = RoundBF16(static_cast<float>(s[j] / sum));
    for (int64_t d = 0; d < dim; ++d) out[d] += p * BF16ToFloat(values[(j * kv_heads + kv_head) * dim + d]);
  }
  return out;
}

TEST(PagedAttentionTest, MatchesNaiveReferenceWithGqa) {
  const int64_t heads = 8, kv_heads = 2, dim = 64, block_size = 5;  // 5 divides no context below
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  for (int64_t context : {1, 7, 33, 258}) {
    TestCache cache((context + block_size - 1) / block_size, block_size, kv_heads, dim, 4);
    const std::vector<bf16> keys = RandomBf16(context * kv_heads * dim, 5);
    const std::vector<bf16> values = RandomBf16(context * kv_heads * dim, 6);
    WriteKv(keys.data(), kv_heads * dim, values.data(), kv_heads * dim, context, 0, cache.table.data(),
            cache.kv);
    // Queries for the last 3 positions (or fewer), as a prefill chunk would issue them.
    const int64_t num_tokens = std::min<int64_t>(3, context), start = context - num_tokens;
    const std::vector<bf16> q = RandomBf16(num_tokens * heads * dim, 7, 2.0f);
    std::vector<bf16> out(num_tokens * heads * dim);
    PagedAttention(q.data(), heads * dim, num_tokens, start, heads, scale, cache.table.data(), cache.kv,
                   out.data(), heads * dim);
    for (int64_t t = 0; t < num_tokens; ++t) {
      for (int64_t h = 0; h < heads; ++h) {
        const std::vector<double> ref =
            ReferenceAttention(q.data() + (t * heads + h) * dim, keys, values, start + t, kv_heads, dim,
                               h / (heads / kv_heads), scale);
        for (int64_t d = 0; d < dim; ++d) {
          const double got = BF16ToFloat(out[(t * heads + h) * dim + d]);
          ASSERT_NEAR(got, ref[d], std::ldexp(std::fabs(ref[d]), -8) + 1e-4)
              << "context " << context << " t " << t << " h " << h << " d " << d;
        }
      }
    }
  }
}

TEST(PagedAttentionTest, QueryHeadsUseTheirKvGroup) {
  // Only kv head 1 has nonzero values: query heads 0-1 (group 0) must output 0, 2-3 nonzero.
  const int64_t heads = 4, kv_heads = 2, dim = 16, context = 6;
  TestCache cache(2, 4, kv_heads, dim, 8);
  std::vector<bf16> keys = RandomBf16(context * kv_heads * dim, 9);
  std::vector<bf16> values(context * kv_heads * dim, FloatToBF16(0.0f));
  for (int64_t j = 0; j < context; ++j)
    for (int64_t d = 0; d < dim; ++d) values[(j * kv_heads + 1) * dim + d] = FloatToBF16(1.0f);
  WriteKv(keys.data(), kv_heads * dim, values.data(), kv_heads * dim, context, 0, cache.table.data(),
          cache.kv);
  const std::vector<bf16> q = RandomBf16(heads * dim, 10);
  std::vector<bf16> out(heads * dim);
  PagedAttention(q.data(), heads * dim, 1, context - 1, heads, 0.25f, cache.table.data(), cache.kv,
                 out.data(), heads * dim);
  for (int64_t d = 0; d < 2 * dim; ++d) EXPECT_EQ(BF16ToFloat(out[d]), 0.0f);
  // Sum of bf16-rounded probabilities is within a few bf16 ulps of 1.
  for (int64_t d = 2 * dim; d < 4 * dim; ++d) EXPECT_NEAR(BF16ToFloat(out[d]), 1.0f, 0.02f);
}

// Chunked prefill, one-shot prefill, decode-style single queries and other thread counts give
// identical bits for each query (single-pass softmax over the full context).
TEST(PagedAttentionTest, IsInvariantToChunkingAndThreads) {
  const int64_t heads = 4, kv_heads = 1, dim = 128, block_size = 16, context = 100;
  TestCache cache(7, block_size, kv_heads, dim, 11);
  const std::vector<bf16> keys = RandomBf16(context * kv_heads * dim, 12);
  const std::vector<bf16> values = RandomBf16(context * kv_heads * dim, 13);
  WriteKv(keys.data(), dim, values.data(), dim, context, 0, cache.table.data(), cache.kv);
  const std::vector<bf16> q = RandomBf16(context * heads * dim, 14);
  const int64_t row = heads * dim;
  std::vector<bf16> all(context * row), one(context * row), chunked(context * row), threads(context * row);
  PagedAttention(q.data(), row, context, 0, heads, 0.088f, cache.table.data(), cache.kv, all.data(), row);
  for (int64_t t = 0; t < context; ++t)
    PagedAttention(q.data() + t * row, row, 1, t, heads, 0.088f, cache.table.data(), cache.kv,
                   one.data() + t * row, row);
  EXPECT_EQ(FirstDifference(all, one), -1);
  for (int64_t start = 0; start < context; start += 37) {
    const int64_t n = std::min<int64_t>(37, context - start);
    PagedAttention(q.data() + start * row, row, n, start, heads, 0.088f, cache.table.data(), cache.kv,
                   chunked.data() + start * row, row);
  }
  EXPECT_EQ(FirstDifference(all, chunked), -1);
  ThreadPool pool(3);
  ScopedThreadPool scoped(&pool);
  PagedAttention(q.data(), row, context, 0, heads, 0.088f, cache.table.data(), cache.kv, threads.data(), row);
  EXPECT_EQ(FirstDifference(all, threads), -1);
}

// The AVX2 path (all query heads of a KV group per task) must give the portable path's bits:
// groups smaller than, equal to and larger than its 8-head chunk, several KV heads, queries that
// start mid-sequence, head_dim 16 and 128, and a query head whose scores contain a large spread.
TEST(PagedAttentionTest, Avx2GroupedPathEqualsPortableBitForBit) {
  if (!CpuSupports(Isa::kAvx2Fma)) GTEST_SKIP() << "no AVX2/FMA on this CPU";
  const Isa saved = ActiveIsa();
  struct Case {
    int64_t heads, kv_heads, dim, start, tokens;
  };
  for (const Case& c : {Case{8, 1, 128, 0, 40}, Case{32, 4, 128, 0, 70}, Case{6, 2, 16, 21, 9},
                        Case{24, 2, 128, 5, 33}, Case{4, 4, 32, 50, 3}}) {
    const int64_t block_size = 16, context = c.start + c.tokens;
    TestCache cache((context + block_size - 1) / block_size, block_size, c.kv_heads, c.dim, 21);
    const int64_t kv_row = c.kv_heads * c.dim, row = c.heads * c.dim;
    const std::vector<bf16> keys = RandomBf16(context * kv_row, 22, 4.0f);
    const std::vector<bf16> values = RandomBf16(context * kv_row, 23);
    WriteKv(keys.data(), kv_row, values.data(), kv_row, context, 0, cache.table.data(), cache.kv);
    const std::vector<bf16> q = RandomBf16(c.tokens * row, 24, 4.0f);
    std::vector<bf16> fast(c.tokens * row), portable(c.tokens * row);
    internal::SetIsaForTesting(Isa::kAvx2Fma);
    PagedAttention(q.data(), row, c.tokens, c.start, c.heads, 0.088f, cache.table.data(), cache.kv,
                   fast.data(), row);
    internal::SetIsaForTesting(Isa::kPortable);
    PagedAttention(q.data(), row, c.tokens, c.start, c.heads, 0.088f, cache.table.data(), cache.kv,
                   portable.data(), row);
    EXPECT_EQ(FirstDifference(fast, portable), -1)
        << "heads " << c.heads << " kv " << c.kv_heads << " dim " << c.dim;
  }
  internal::SetIsaForTesting(saved);
}

// Pins the dot product's documented order with absorption, on every path: lane 0 of q . k_0 adds
// d = 0, 16, 32 in that order: (2^24 + 1) - 2^24 = 0 in fp32 (the 1 is absorbed), while another
// order gives 1. With key 1 all zero, score 0 makes P = (0.5, 0.5) and the output v_0 / 2 = 0.5;
// score 1 would give 0.73.
TEST(PagedAttentionTest, DotProductFollowsDocumentedOrderOnEveryPath) {
  const Isa saved = ActiveIsa();
  const int64_t heads = 8, kv_heads = 1, dim = 128, block_size = 16;
  TestCache cache(1, block_size, kv_heads, dim, 31);
  std::vector<bf16> keys(2 * dim, FloatToBF16(0.0f)), values(2 * dim, FloatToBF16(0.0f));
  keys[0] = FloatToBF16(4096.0f);
  keys[16] = FloatToBF16(1.0f);
  keys[32] = FloatToBF16(4096.0f);
  for (int64_t d = 0; d < dim; ++d) values[d] = FloatToBF16(1.0f);
  WriteKv(keys.data(), dim, values.data(), dim, 2, 0, cache.table.data(), cache.kv);
  std::vector<bf16> q(heads * dim, FloatToBF16(0.0f));
  for (int64_t h = 0; h < heads; ++h) {
    q[h * dim + 0] = FloatToBF16(4096.0f);
    q[h * dim + 16] = FloatToBF16(1.0f);
    q[h * dim + 32] = FloatToBF16(-4096.0f);
  }
  for (Isa isa : {Isa::kPortable, Isa::kAvx2Fma, Isa::kAvx512Bf16}) {
    if (!CpuSupports(isa)) continue;
    internal::SetIsaForTesting(isa);
    std::vector<bf16> out(heads * dim);
    PagedAttention(q.data(), heads * dim, 1, 1, heads, 1.0f, cache.table.data(), cache.kv, out.data(),
                   heads * dim);
    for (int64_t i = 0; i < heads * dim; ++i)
      ASSERT_EQ(BF16ToFloat(out[i]), 0.5f) << IsaName(isa) << " " << i;
  }
  internal::SetIsaForTesting(saved);
}

// The contract of kernels.h written out once more, plainly, over the logical (unpaged) K and V
// ([context, kv_heads, dim]): for each query row, 16 fp32 lanes where lane i adds q[d]*k[d] for
// d = i mod 16 ascending, the fixed tree (i, i+8), (i, i+4), (i, i+2), (0, 1), times scale; max,
// exp (SoftmaxExp) and sum in ascending j; P rounded to bf16; o from +0 adding P_j * v_j in ascending j;
// bf16. This file builds with -ffp-contract=off, so every multiply and add rounds separately.
std::vector<bf16> ContractAttention(const std::vector<bf16>& q, int64_t num_tokens, int64_t start_pos,
                                    int64_t num_heads, float scale, const std::vector<bf16>& keys,
                                    const std::vector<bf16>& values, int64_t kv_heads, int64_t dim) {
  const int64_t group = num_heads / kv_heads;
  std::vector<bf16> out(num_tokens * num_heads * dim);
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t h = 0; h < num_heads; ++h) {
      const bf16* qh = q.data() + (t * num_heads + h) * dim;
      const int64_t kvh = h / group, context = start_pos + t + 1;
      std::vector<float> p(context);
      for (int64_t j = 0; j < context; ++j) {
        const bf16* k = keys.data() + (j * kv_heads + kvh) * dim;
        float lane[16] = {};
        for (int64_t d = 0; d < dim; ++d) lane[d % 16] += BF16ToFloat(qh[d]) * BF16ToFloat(k[d]);
        float s8[8], s4[4];
        for (int i = 0; i < 8; ++i) s8[i] = lane[i] + lane[i + 8];
        for (int i = 0; i < 4; ++i) s4[i] = s8[i] + s8[i + 4];
        p[j] = ((s4[0] + s4[2]) + (s4[1] + s4[3])) * scale;
      }
      float max_s = -INFINITY, sum = 0.0f;
      for (float x : p) max_s = std::max(max_s, x);
      for (float& x : p) sum += (x = internal::SoftmaxExp(x - max_s));
      std::vector<float> o(dim, 0.0f);
      for (int64_t j = 0; j < context; ++j) {
        const float pj = RoundBF16(p[j] / sum);
        const bf16* v = values.data() + (j * kv_heads + kvh) * dim;
        for (int64_t d = 0; d < dim; ++d) o[d] += pj * BF16ToFloat(v[d]);
      }
      for (int64_t d = 0; d < dim; ++d) out[(t * num_heads + h) * dim + d] = FloatToBF16(o[d]);
    }
  }
  return out;
}

// Every implementation (the tiled one PagedAttention runs, the per-token AVX2 one, the scalar one)
// gives the contract's bits on odd shapes: 1, 7, 33 and 130 queries from position 0 and from
// mid-sequence, a block size that divides no context, GQA ratios 1, 4 and 8, head_dim 64 and 128,
// one and three threads (which changes the tiling), and every ISA this CPU has.
TEST(PagedAttentionTest, EveryPathGivesTheContractsBits) {
  using internal::AttentionPath;
  const int64_t block_size = 7;
  struct Gqa {
    int64_t heads, kv_heads;
  };
  ThreadPool three(3), one(1);
  const Isa saved = ActiveIsa();
  // The tiled path has AVX2 and AVX-512 micro-kernels, picked by the active ISA.
  std::vector<Isa> isas;
  for (Isa isa : {Isa::kPortable, Isa::kAvx2Fma, Isa::kAvx512Bf16}) {
    if (CpuSupports(isa)) isas.push_back(isa);
  }
  int cases = 0;
  for (int64_t dim : {64, 128}) {
    for (const Gqa& gqa : {Gqa{3, 3}, Gqa{8, 2}, Gqa{16, 2}}) {
      for (int64_t start : {0, 45}) {
        for (int64_t tokens : {1, 7, 33, 130}) {
          const int64_t context = start + tokens, kv_row = gqa.kv_heads * dim, row = gqa.heads * dim;
          const uint32_t seed = static_cast<uint32_t>(dim + gqa.heads + start + tokens);
          TestCache cache((context + block_size - 1) / block_size + 1, block_size, gqa.kv_heads, dim, seed);
          const std::vector<bf16> keys = RandomBf16(context * kv_row, seed + 1, 3.0f);
          const std::vector<bf16> values = RandomBf16(context * kv_row, seed + 2);
          WriteKv(keys.data(), kv_row, values.data(), kv_row, context, 0, cache.table.data(), cache.kv);
          const std::vector<bf16> q = RandomBf16(tokens * row, seed + 3, 3.0f);
          const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
          const std::vector<bf16> want =
              ContractAttention(q, tokens, start, gqa.heads, scale, keys, values, gqa.kv_heads, dim);
          for (Isa isa : isas) {
            internal::SetIsaForTesting(isa);
            for (AttentionPath path : {AttentionPath::kAuto, AttentionPath::kTiled, AttentionPath::kPerToken,
                                       AttentionPath::kScalar}) {
              for (ThreadPool* pool : {&one, &three}) {
                ScopedThreadPool scoped(pool);
                std::vector<bf16> got(tokens * row, FloatToBF16(-1.0f));
                internal::PagedAttentionWithPath(path, q.data(), row, tokens, start, gqa.heads, scale,
                                                 cache.table.data(), cache.kv, got.data(), row);
                ASSERT_EQ(FirstDifference(got, want), -1)
                    << IsaName(isa) << " path " << static_cast<int>(path) << " threads "
                    << pool->num_threads() << " dim " << dim << " heads " << gqa.heads << "/" << gqa.kv_heads
                    << " start " << start << " tokens " << tokens;
                ++cases;
              }
            }
          }
          internal::SetIsaForTesting(saved);
        }
      }
    }
  }
  EXPECT_EQ(cases, 2 * 3 * 2 * 4 * static_cast<int>(isas.size()) * 4 * 2);
}

// Non-finite inputs do not make the paths disagree: a NaN in one query head, an infinite key
// element (infinite or NaN scores), a huge value. Each path gives the contract's bits.
TEST(PagedAttentionTest, NonFiniteInputsGiveTheContractsBits) {
  using internal::AttentionPath;
  const Isa saved = ActiveIsa();
  const int64_t heads = 8, kv_heads = 2, dim = 64, block_size = 7, start = 3, tokens = 20;
  const int64_t context = start + tokens, kv_row = kv_heads * dim, row = heads * dim;
  TestCache cache((context + block_size - 1) / block_size, block_size, kv_heads, dim, 41);
  std::vector<bf16> keys = RandomBf16(context * kv_row, 42), values = RandomBf16(context * kv_row, 43);
  keys[5 * kv_row + 3] = FloatToBF16(INFINITY);           // key 5 of KV head 0
  values[9 * kv_row + dim + 1] = FloatToBF16(-INFINITY);  // value 9 of KV head 1
  values[2 * kv_row + 7] = FloatToBF16(3.0e38f);          // value 2 of KV head 0
  WriteKv(keys.data(), kv_row, values.data(), kv_row, context, 0, cache.table.data(), cache.kv);
  std::vector<bf16> q = RandomBf16(tokens * row, 44);
  q[(4 * heads + 6) * dim + 10] = FloatToBF16(NAN);  // token 4, head 6
  const std::vector<bf16> want =
      ContractAttention(q, tokens, start, heads, 0.125f, keys, values, kv_heads, dim);
  int nans = 0, infs = 0;
  for (bf16 x : want) {
    nans += std::isnan(BF16ToFloat(x)) ? 1 : 0;
    infs += std::isinf(BF16ToFloat(x)) ? 1 : 0;
  }
  ASSERT_GT(nans, 0);  // the cases above do reach the output
  ASSERT_GT(infs, 0);
  for (Isa isa : {Isa::kPortable, Isa::kAvx2Fma, Isa::kAvx512Bf16}) {
    if (!CpuSupports(isa)) continue;
    internal::SetIsaForTesting(isa);
    for (AttentionPath path : {AttentionPath::kTiled, AttentionPath::kPerToken, AttentionPath::kScalar}) {
      std::vector<bf16> got(tokens * row);
      internal::PagedAttentionWithPath(path, q.data(), row, tokens, start, heads, 0.125f, cache.table.data(),
                                       cache.kv, got.data(), row);
      EXPECT_EQ(FirstDifference(got, want), -1) << IsaName(isa) << " path " << static_cast<int>(path);
    }
  }
  internal::SetIsaForTesting(saved);
}

// Keys and queries crafted against the VDPBF16PS form of the tiled path (AVX-512 BF16 ISA): every
// path must still give the contract's bits. "lane order": in lane 3 of some keys the products are
// 2^24, 1, 1, -2^24 for d = 3, 19, 35, 51, which DotQK's order sums to 0 but any other pairing or
// order within the lane (or the linear kernel's layout, d = 2i+1 then 2i) does not. "subnormal
// input": a query element of 2^-130 against a key element of 2^120, which VDPBF16PS reads as 0
// where it flushes subnormal inputs as Intel documents (this Zen 4's does not; the case guards those).
// "subnormal sum": products 1.5 * 2^-126 and -2^-126, whose partial sum 2^-127 VDPBF16PS would
// flush to 0, made visible by a scale of 2^120. For P·V (all keys 0, so each row's P is uniform):
// "PV order", value element 5 of keys 2-5 is 2^24, 1, 1, -2^24, which ascending j sums differently
// from any other order; "PV subnormal sum", 2^-121 and -(1 - 2^-7) * 2^-121, whose products with P
// leave a subnormal sum that VDPBF16PS would flush to 0. The subnormal cases must take the fp32
// fallback.
TEST(PagedAttentionTest, CraftedOperandsGiveTheContractsBits) {
  using internal::AttentionPath;
  const Isa saved = ActiveIsa();
  const int64_t heads = 8, kv_heads = 2, dim = 64, block_size = 7, tokens = 24;
  const int64_t kv_row = kv_heads * dim, row = heads * dim;
  enum Case { kLaneOrder, kSubnormalInput, kSubnormalSum, kPvOrder, kPvSubnormalSum };
  for (Case c : {kLaneOrder, kSubnormalInput, kSubnormalSum, kPvOrder, kPvSubnormalSum}) {
    TestCache cache((tokens + block_size - 1) / block_size, block_size, kv_heads, dim, 51);
    std::vector<bf16> keys = RandomBf16(tokens * kv_row, 52, 0.5f), values = RandomBf16(tokens * kv_row, 53);
    std::vector<bf16> q(tokens * row, FloatToBF16(1.0f));
    float scale = 0.125f;
    for (int64_t j = 1; j < tokens; j += 3) {
      for (int64_t g = 0; g < kv_heads; ++g) {
        bf16* k = keys.data() + j * kv_row + g * dim;
        if (c == kLaneOrder) {
          for (int64_t d = 0; d < dim; ++d) k[d] = FloatToBF16(0.0f);
          k[3] = FloatToBF16(16777216.0f);
          k[19] = k[35] = FloatToBF16(1.0f);
          k[51] = FloatToBF16(-16777216.0f);
        } else if (c == kSubnormalInput) {
          k[5] = FloatToBF16(std::ldexp(1.0f, 120));
        }
      }
    }
    if (c == kSubnormalInput) {
      for (int64_t t = 0; t < tokens; t += 2)
        q[(t * heads + 1) * dim + 5] = FloatToBF16(std::ldexp(1.0f, -130));
      // Keep the other heads' scores finite against the huge key element.
      for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t h = 0; h < heads; ++h) {
          if (h != 1 || t % 2 != 0) q[(t * heads + h) * dim + 5] = FloatToBF16(0.0f);
        }
      }
    } else if (c == kSubnormalSum) {
      scale = std::ldexp(1.0f, 120);
      for (bf16& x : keys) x = FloatToBF16(0.0f);
      for (bf16& x : q) x = FloatToBF16(0.0f);
      for (int64_t j = 1; j < tokens; j += 3) {
        for (int64_t g = 0; g < kv_heads; ++g)
          keys[j * kv_row + g * dim + 2] = FloatToBF16(std::ldexp(1.0f, -63));
      }
      for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t h = 0; h < heads; ++h) {
          bf16* qh = q.data() + (t * heads + h) * dim;
          qh[2] = FloatToBF16(1.5f * std::ldexp(1.0f, -63));  // lane 2, d = 2: 1.5 * 2^-126
        }
      }
      // d = 18 (lane 2's second product): -2^-126 on the same keys.
      for (int64_t j = 1; j < tokens; j += 3) {
        for (int64_t g = 0; g < kv_heads; ++g)
          keys[j * kv_row + g * dim + 18] = FloatToBF16(std::ldexp(1.0f, -63));
      }
      for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t h = 0; h < heads; ++h)
          q[(t * heads + h) * dim + 18] = FloatToBF16(-std::ldexp(1.0f, -63));
      }
    }
    if (c == kPvOrder || c == kPvSubnormalSum) {
      for (bf16& x : keys) x = FloatToBF16(0.0f);
      const float big = 16777216.0f, tiny = std::ldexp(1.0f, -121);
      const float pattern[2][4] = {{big, 1.0f, 1.0f, -big}, {tiny, -(1.0f - 1.0f / 128) * tiny, 0.0f, 0.0f}};
      for (int64_t j = 0; j < tokens; ++j) {
        for (int64_t g = 0; g < kv_heads; ++g) {
          const bool in = j >= 2 && j < 6;
          values[j * kv_row + g * dim + 5] = FloatToBF16(in ? pattern[c == kPvSubnormalSum][j - 2] : 0.0f);
        }
      }
    }
    WriteKv(keys.data(), kv_row, values.data(), kv_row, tokens, 0, cache.table.data(), cache.kv);
    const std::vector<bf16> want = ContractAttention(q, tokens, 0, heads, scale, keys, values, kv_heads, dim);
    for (Isa isa : {Isa::kPortable, Isa::kAvx2Fma, Isa::kAvx512Bf16}) {
      if (!CpuSupports(isa)) continue;
      internal::SetIsaForTesting(isa);
      for (AttentionPath path : {AttentionPath::kTiled, AttentionPath::kTiledFp32, AttentionPath::kPerToken,
                                 AttentionPath::kScalar}) {
        std::vector<bf16> got(tokens * row);
        internal::PagedAttentionWithPath(path, q.data(), row, tokens, 0, heads, scale, cache.table.data(),
                                         cache.kv, got.data(), row);
        EXPECT_EQ(FirstDifference(got, want), -1)
            << "case " << static_cast<int>(c) << " " << IsaName(isa) << " path " << static_cast<int>(path);
      }
    }
    internal::SetIsaForTesting(saved);
  }
}

// SoftmaxExp's test inputs: every 509th bit pattern of the negative floats (-0 to -inf and the
// negative NaNs), the positive NaNs, +0, the floats next to the flush threshold -87.33654 and to
// -1, and some positive x up to 88.
std::vector<float> ExpTestInputs() {
  std::vector<float> xs;
  for (uint64_t b = 0x80000000u; b <= 0xffffffffu; b += 509)
    xs.push_back(std::bit_cast<float>(static_cast<uint32_t>(b)));
  for (float x : {-87.33654f, -1.0f}) {
    float lo = x, hi = x;
    for (int i = 0; i < 8; ++i) {
      xs.push_back(lo = std::nextafter(lo, -INFINITY));
      xs.push_back(hi = std::nextafter(hi, INFINITY));
    }
  }
  for (float x :
       {0.0f, -0.0f, -INFINITY, std::numeric_limits<float>::quiet_NaN(), std::bit_cast<float>(0x7fa00001u),
        -std::numeric_limits<float>::denorm_min(), 1e-30f, 0.5f, 1.0f, 10.0f, 50.0f, 87.9f, 88.0f}) {
    xs.push_back(x);
  }
  return xs;
}

bool SameBitsOrBothNan(float a, float b) {
  return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b) || (std::isnan(a) && std::isnan(b));
}

// The vector forms of SoftmaxExp (8 and 16 lanes, with their tails) give the scalar twin's bits for
// every input, whatever the shift, and write nothing past the row.
TEST(SoftmaxExpTest, EveryIsaGivesTheScalarTwinsBits) {
  const std::vector<float> xs = ExpTestInputs();
  const int64_t size = static_cast<int64_t>(xs.size());
  int isas = 0;
  for (Isa isa : {Isa::kPortable, Isa::kAvx2Fma, Isa::kAvx512Bf16}) {
    if (!CpuSupports(isa)) continue;
    ++isas;
    for (float shift : {0.0f, 1.5f, -3.25f, 100.0f}) {
      std::vector<float> got = xs;
      // Rows of 1 to 40 elements: vector bodies and every tail length.
      for (int64_t pos = 0, len = 1; pos < size; pos += len, len = len % 40 + 1) {
        internal::SoftmaxExpRow(isa, got.data() + pos, std::min(len, size - pos), shift);
      }
      for (int64_t i = 0; i < size; ++i) {
        const float want = internal::SoftmaxExp(xs[i] - shift);
        ASSERT_TRUE(SameBitsOrBothNan(got[i], want))
            << IsaName(isa) << " x " << xs[i] << " (0x" << std::hex << std::bit_cast<uint32_t>(xs[i])
            << std::dec << ") shift " << shift << ": " << got[i] << " against the scalar twin's " << want;
      }
    }
    for (int64_t n = 0; n <= 20; ++n) {
      std::vector<float> row(40, -2.0f);
      internal::SoftmaxExpRow(isa, row.data(), n, 0.0f);
      for (int64_t j = 0; j < 40; ++j) {
        ASSERT_EQ(std::bit_cast<uint32_t>(row[j]),
                  std::bit_cast<uint32_t>(j < n ? internal::SoftmaxExp(-2.0f) : -2.0f))
            << IsaName(isa) << " n " << n << " j " << j;
      }
    }
  }
  EXPECT_GE(isas, 1);
}

// Accuracy over the range the softmax uses (x = s - max <= 0): under 1 ulp from exp(x) computed in
// double (faithful rounding), so at most 1 ulp from std::exp; the documented special values.
TEST(SoftmaxExpTest, IsFaithfulDownToTheFlushThreshold) {
  const float flush = -87.33654f;  // the smallest float whose exp is a normal float
  ASSERT_GE(std::exp(static_cast<double>(flush)), FLT_MIN);
  ASSERT_LT(std::exp(static_cast<double>(std::nextafter(flush, -INFINITY))), FLT_MIN);
  double worst = 0, worst_x = 0;
  int64_t checked = 0, off_by_one = 0;
  auto check = [&](float x) {
    const float got = internal::SoftmaxExp(x);
    const double exact = std::exp(static_cast<double>(x));
    const double ulp = std::ldexp(1.0, std::ilogb(exact) - 23);  // of a float in [2^e, 2^(e+1))
    const double err = std::fabs(static_cast<double>(got) - exact) / ulp;
    if (err > worst) {
      worst = err;
      worst_x = x;
    }
    const int64_t apart = std::llabs(static_cast<int64_t>(std::bit_cast<uint32_t>(got)) -
                                     static_cast<int64_t>(std::bit_cast<uint32_t>(std::exp(x))));
    ASSERT_LE(apart, 1) << "x " << x << ": " << got << " against std::exp's " << std::exp(x);
    off_by_one += apart;
    ++checked;
  };
  // Every 97th float of [flush, -0] (about 11.5 million), both ends, and x up to 88.
  for (uint32_t b = 0x80000000u; b <= std::bit_cast<uint32_t>(flush); b += 97) check(std::bit_cast<float>(b));
  for (float x : {flush, -0.0f, 0.0f, 1e-30f, 0.5f, 1.0f, 10.0f, 50.0f, 87.9f, 88.0f}) check(x);
  std::printf(
      "[SoftmaxExp] %lld inputs, max error %.4f ulp (at x = %.9g), %lld differ from std::exp by 1 ulp\n",
      static_cast<long long>(checked), worst, worst_x, static_cast<long long>(off_by_one));
  EXPECT_LT(worst, 1.0);
  EXPECT_GT(checked, 10000000);

  EXPECT_EQ(std::bit_cast<uint32_t>(internal::SoftmaxExp(0.0f)), std::bit_cast<uint32_t>(1.0f));
  EXPECT_EQ(std::bit_cast<uint32_t>(internal::SoftmaxExp(-0.0f)), std::bit_cast<uint32_t>(1.0f));
  EXPECT_EQ(internal::SoftmaxExp(-std::numeric_limits<float>::denorm_min()), 1.0f);
  EXPECT_GE(internal::SoftmaxExp(flush), FLT_MIN);
  for (float x : {std::nextafter(flush, -INFINITY), -88.0f, -103.0f, -1e30f,
                  std::numeric_limits<float>::lowest(), -INFINITY}) {
    EXPECT_EQ(std::bit_cast<uint32_t>(internal::SoftmaxExp(x)), 0u) << x;  // +0: below FLT_MIN, flushed
  }
  EXPECT_TRUE(std::isnan(internal::SoftmaxExp(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isnan(internal::SoftmaxExp(-std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isnan(internal::SoftmaxExp(std::bit_cast<float>(0x7fa00001u))));  // signalling
}

}  // namespace
}  // namespace moe::kernels::cpu
