#include <cmath>
#include <vector>

#include "common/kernels/cpu/kernels.h"
#include "common/kernels/cpu/thread_pool.h"
#include "gtest/gtest.h"
#include "tests/common/kernels/cpu/test_util.h"

namespace moe::kernels::cpu {
namespace {

using testing::FirstDifference;
using testing::RandomBf16;

// Straightforward RMSNorm reference (docs/numerics.md#rmsnorm) with a double sum of squares.
std::vector<float> ReferenceRmsNorm(const bf16* x, int64_t dim, const bf16* w, float eps) {
  double sum = 0;
  for (int64_t i = 0; i < dim; ++i) sum += static_cast<double>(BF16ToFloat(x[i])) * BF16ToFloat(x[i]);
  const float inv = 1.0f / std::sqrt(static_cast<float>(sum / dim) + eps);
  std::vector<float> y(dim);
  for (int64_t i = 0; i < dim; ++i) y[i] = RoundBF16(RoundBF16(BF16ToFloat(x[i]) * inv) * BF16ToFloat(w[i]));
  return y;
}

TEST(RmsNormTest, MatchesReference) {
  const int64_t rows = 5, dim = 2048 + 7;
  const std::vector<bf16> x = RandomBf16(rows * dim, 1, 2.0f), w = RandomBf16(dim, 2);
  std::vector<bf16> y(rows * dim);
  RmsNorm(x.data(), dim, rows, dim, w.data(), 1e-6f, y.data(), dim);
  int mismatches = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<float> ref = ReferenceRmsNorm(x.data() + r * dim, dim, w.data(), 1e-6f);
    for (int64_t i = 0; i < dim; ++i) {
      const float got = BF16ToFloat(y[r * dim + i]);
      // The fp32 vs double sum may move inv by an ulp, which can flip a bf16 rounding.
      ASSERT_LE(std::fabs(got - ref[i]), std::ldexp(std::fabs(ref[i]), -7)) << r << "," << i;
      mismatches += got != ref[i];
    }
  }
  EXPECT_LT(mismatches, rows * dim / 100);
}

// x = [1, 2, 2, 4]: the sum of squares (25) is exact, inv = fp32(1/sqrt(6.25 + 1e-6)) = 0.39999998,
// so x*inv sits just below 0.4, 0.8, 1.6. Rounding to bf16 first (0.40039062...) and then
// multiplying by w = 1 + 2^-7 lands on a different bf16 than rounding the product once.
TEST(RmsNormTest, RoundsBeforeWeightMultiply) {
  const std::vector<bf16> x = {FloatToBF16(1.0f), FloatToBF16(2.0f), FloatToBF16(2.0f), FloatToBF16(4.0f)};
  const std::vector<bf16> w(4, FloatToBF16(1.0078125f));
  std::vector<bf16> y(4);
  RmsNorm(x.data(), 4, 1, 4, w.data(), 1e-6f, y.data(), 4);
  EXPECT_EQ(BF16ToFloat(y[0]), 0.40429688f);  // one rounding would give 0.40234375
  EXPECT_EQ(BF16ToFloat(y[1]), 0.80859375f);  // vs 0.8046875
  EXPECT_EQ(BF16ToFloat(y[2]), 0.80859375f);
  EXPECT_EQ(BF16ToFloat(y[3]), 1.6171875f);  // vs 1.609375
}

TEST(RmsNormTest, IsBatchInvariantAndInPlace) {
  const int64_t rows = 40, dim = 128;
  const std::vector<bf16> x = RandomBf16(rows * dim, 3), w = RandomBf16(dim, 4);
  std::vector<bf16> all(rows * dim), one(rows * dim);
  RmsNorm(x.data(), dim, rows, dim, w.data(), 1e-6f, all.data(), dim);
  for (int64_t r = 0; r < rows; ++r)
    RmsNorm(x.data() + r * dim, dim, 1, dim, w.data(), 1e-6f, one.data() + r * dim, dim);
  EXPECT_EQ(FirstDifference(all, one), -1);
  ThreadPool pool(3);
  ScopedThreadPool scoped(&pool);
  std::vector<bf16> in_place = x;
  RmsNorm(in_place.data(), dim, rows, dim, w.data(), 1e-6f, in_place.data(), dim);
  EXPECT_EQ(FirstDifference(all, in_place), -1);
}

TEST(SiluMulTest, RoundsSiluThenProduct) {
  const std::vector<bf16> gate = RandomBf16(3000, 5, 3.0f), up = RandomBf16(3000, 6, 3.0f);
  std::vector<bf16> out(3000);
  SiluMul(gate.data(), up.data(), 3000, out.data());
  for (int i = 0; i < 3000; ++i) {
    const float g = BF16ToFloat(gate[i]);
    const float silu = RoundBF16(g / (1.0f + std::exp(-g)));  // fp32 silu (docs/numerics.md#experts)
    ASSERT_NEAR(silu, g / (1.0 + std::exp(-static_cast<double>(g))), 0.01 * std::fabs(silu) + 1e-30);
    const float expected = RoundBF16(silu * BF16ToFloat(up[i]));
    ASSERT_EQ(BF16ToFloat(out[i]), expected) << i;
  }
  // A case where the intermediate rounding matters: silu(0.5) = 0.31122968 -> bf16 0.310546875;
  // times 3 = 0.931640625, a tie that rounds to 0.9296875, whereas rounding 0.933689 once gives
  // 0.93359375.
  const bf16 g1 = FloatToBF16(0.5f), u1 = FloatToBF16(3.0f);
  bf16 o;
  SiluMul(&g1, &u1, 1, &o);
  const float silu_half = 0.5f / (1.0f + std::exp(-0.5f));
  EXPECT_EQ(BF16ToFloat(o), RoundBF16(RoundBF16(silu_half) * 3.0f));
  EXPECT_EQ(BF16ToFloat(o), 0.9296875f);
  EXPECT_NE(BF16ToFloat(o), RoundBF16(silu_half * 3.0f));
}

TEST(AddTest, RoundsOnceAndAllowsAliasing) {
  // 1 + 2^-9 is not a bf16: the fp32 sum rounds once (ties to even -> 1).
  std::vector<bf16> a = {FloatToBF16(1.0f), FloatToBF16(1.0f), FloatToBF16(256.0f)};
  const std::vector<bf16> b = {FloatToBF16(std::ldexp(1.0f, -9)), FloatToBF16(3.0f * std::ldexp(1.0f, -9)),
                               FloatToBF16(1.5f)};
  Add(a.data(), b.data(), 3, a.data());
  EXPECT_EQ(BF16ToFloat(a[0]), 1.0f);
  EXPECT_EQ(BF16ToFloat(a[1]), 1.0078125f);
  EXPECT_EQ(BF16ToFloat(a[2]), 258.0f);  // 257.5 -> nearest even bf16 (step 2)
}

TEST(EmbedTest, GathersRows) {
  const std::vector<bf16> table = RandomBf16(10 * 6, 7);
  const int32_t ids[] = {3, 0, 9, 3};
  std::vector<bf16> out(4 * 6);
  Embed(table.data(), 6, ids, 4, out.data());
  for (int t = 0; t < 4; ++t)
    for (int i = 0; i < 6; ++i) EXPECT_EQ(out[t * 6 + i].bits, table[ids[t] * 6 + i].bits);
}

TEST(TopKSoftmaxTest, NormalizesAndBreaksTiesByLowerId) {
  // Experts 1, 4 and 6 tie for the top; 2 and 5 tie next.
  const std::vector<float> logits = {0.0f, 2.0f, 1.0f, -1.0f, 2.0f, 1.0f, 2.0f, 0.5f};
  std::vector<bf16> row;
  for (float v : logits) row.push_back(FloatToBF16(v));
  int32_t ids[4];
  float weights[4];
  TopKSoftmax(row.data(), 1, 8, 4, /*norm_topk_prob=*/true, ids, weights);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[1], 4);
  EXPECT_EQ(ids[2], 6);
  EXPECT_EQ(ids[3], 2);
  // Renormalized weights: e^2 : e^2 : e^2 : e^1.
  const double denom = 3 * std::exp(2.0) + std::exp(1.0);
  EXPECT_NEAR(weights[0], std::exp(2.0) / denom, 1e-6);
  EXPECT_NEAR(weights[3], std::exp(1.0) / denom, 1e-6);
  EXPECT_EQ(weights[0], weights[1]);
  EXPECT_NEAR(weights[0] + weights[1] + weights[2] + weights[3], 1.0, 1e-6);

  TopKSoftmax(row.data(), 1, 8, 2, /*norm_topk_prob=*/false, ids, weights);
  double total = 0;
  for (float v : logits) total += std::exp(v);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[1], 4);
  EXPECT_NEAR(weights[0], std::exp(2.0) / total, 1e-6);
}

TEST(TopKSoftmaxTest, RowsAreIndependent) {
  const std::vector<bf16> logits = RandomBf16(33 * 128, 8, 2.0f);
  std::vector<int32_t> ids(33 * 8), one_ids(8);
  std::vector<float> w(33 * 8), one_w(8);
  TopKSoftmax(logits.data(), 33, 128, 8, true, ids.data(), w.data());
  for (int r = 0; r < 33; ++r) {
    TopKSoftmax(logits.data() + r * 128, 1, 128, 8, true, one_ids.data(), one_w.data());
    for (int i = 0; i < 8; ++i) {
      ASSERT_EQ(ids[r * 8 + i], one_ids[i]);
      ASSERT_EQ(w[r * 8 + i], one_w[i]);
      if (i > 0) {
        ASSERT_GE(w[r * 8 + i - 1], w[r * 8 + i]);
      }
    }
  }
}

}  // namespace
}  // namespace moe::kernels::cpu
