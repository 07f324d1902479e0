#include <cmath>
#include <vector>

#include "common/kernels/cpu/kernels.h"
#include "gtest/gtest.h"
#include "tests/common/kernels/cpu/test_util.h"

namespace moe::kernels::cpu {
namespace {

using testing::RandomBf16;

TEST(RopeTableTest, DefaultMatchesDirectFormula) {
  RopeParams params;
  params.theta = 1e6;
  const RopeTable table = BuildRopeTable(params, 128, 3000);
  ASSERT_EQ(table.cos.size(), 3000u * 64);
  for (int64_t p : {0, 1, 7, 999, 2999}) {
    for (int i = 0; i < 64; ++i) {
      const float inv_freq = 1.0f / std::pow(1e6f, static_cast<float>(2 * i) / 128.0f);
      const float angle = static_cast<float>(p) * inv_freq;
      // torch's fp32 cos may differ from the exact one by an ulp; bf16 rounding absorbs it
      // except near a rounding boundary, so allow one bf16 step.
      const double c = std::cos(static_cast<double>(angle)), s = std::sin(static_cast<double>(angle));
      EXPECT_NEAR(BF16ToFloat(table.cos[p * 64 + i]), c, std::ldexp(std::fabs(c), -8) + 1e-30);
      EXPECT_NEAR(BF16ToFloat(table.sin[p * 64 + i]), s, std::ldexp(std::fabs(s), -8) + 1e-30);
    }
  }
  EXPECT_EQ(BF16ToFloat(table.cos[0]), 1.0f);
  EXPECT_EQ(BF16ToFloat(table.sin[0]), 0.0f);
}

// YaRN as Qwen3's card configures it (factor 4, original 32768, theta 1e6, D = 128), against the
// formulas written out in double: dims below `low` keep the original frequency, dims above `high`
// are divided by the factor, a linear ramp blends in between, and cos/sin carry
// attention_factor = 0.1 ln 4 + 1.
TEST(RopeTableTest, YarnBlendsFrequenciesAndScales) {
  RopeParams params;
  params.theta = 1e6;
  params.type = "yarn";
  params.factor = 4.0;
  params.original_max_position_embeddings = 32768;
  const RopeTable table = BuildRopeTable(params, 128, 40);
  const double dim = 128, base = 1e6, orig = 32768;
  auto correction = [&](double rot) {
    return dim * std::log(orig / (rot * 2 * M_PI)) / (2 * std::log(base));
  };
  const double low = std::max(0.0, std::floor(correction(32))),
               high = std::min(dim - 1, std::ceil(correction(1)));
  ASSERT_LT(low, high);
  const float mscale = static_cast<float>(0.1 * std::log(4.0) + 1.0);
  const int64_t p = 37;
  for (int i = 0; i < 64; ++i) {
    const double pos_freq = std::pow(base, 2.0 * i / dim);
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    const double inv_freq = (1.0 / pos_freq) * (1.0 - ramp) + (1.0 / (4.0 * pos_freq)) * ramp;
    const double c = std::cos(p * inv_freq) * mscale, s = std::sin(p * inv_freq) * mscale;
    EXPECT_NEAR(BF16ToFloat(table.cos[p * 64 + i]), c, std::ldexp(std::fabs(c), -7) + 1e-6) << i;
    EXPECT_NEAR(BF16ToFloat(table.sin[p * 64 + i]), s, std::ldexp(std::fabs(s), -7) + 1e-6) << i;
  }
  EXPECT_EQ(BF16ToFloat(table.cos[0]), RoundBF16(mscale));  // position 0: cos = attention_factor

  // An explicit attention_factor replaces the derived one; truncate=false changes the ramp.
  params.attention_factor = 1.0;
  const RopeTable plain = BuildRopeTable(params, 128, 40);
  EXPECT_EQ(BF16ToFloat(plain.cos[0]), 1.0f);
  params.truncate = false;
  const RopeTable untruncated = BuildRopeTable(params, 128, 40);
  int differing = 0;
  for (size_t i = 0; i < plain.cos.size(); ++i) differing += plain.cos[i].bits != untruncated.cos[i].bits;
  EXPECT_GT(differing, 0);
}

TEST(ApplyRopeTest, RotatesWithThreeRoundingsPerPosition) {
  RopeParams params;
  params.theta = 10000.0;
  const int64_t dim = 128, heads = 3, tokens = 4;
  const RopeTable table = BuildRopeTable(params, dim, 100);
  const std::vector<bf16> x = RandomBf16(tokens * heads * dim, 9);
  std::vector<bf16> y = x;
  const int64_t positions[] = {0, 5, 99, 5};
  ApplyRope(y.data(), heads * dim, tokens, heads, positions, table);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      const bf16* in = x.data() + (t * heads + h) * dim;
      const bf16* out = y.data() + (t * heads + h) * dim;
      for (int i = 0; i < 64; ++i) {
        const float c = BF16ToFloat(table.cos[positions[t] * 64 + i]);
        const float s = BF16ToFloat(table.sin[positions[t] * 64 + i]);
        const float x1 = BF16ToFloat(in[i]), x2 = BF16ToFloat(in[i + 64]);
        ASSERT_EQ(BF16ToFloat(out[i]), RoundBF16(RoundBF16(x1 * c) + RoundBF16(-x2 * s)));
        ASSERT_EQ(BF16ToFloat(out[i + 64]), RoundBF16(RoundBF16(x2 * c) + RoundBF16(x1 * s)));
      }
    }
  }
  // Position 0 is the identity; equal positions give equal rotations.
  for (int i = 0; i < heads * dim; ++i) EXPECT_EQ(y[i].bits, x[i].bits);
  std::vector<bf16> again(x.begin() + 3 * heads * dim, x.end());
  const int64_t five[] = {5};
  ApplyRope(again.data(), heads * dim, 1, heads, five, table);
  for (int i = 0; i < heads * dim; ++i) EXPECT_EQ(again[i].bits, y[3 * heads * dim + i].bits);
}

TEST(ApplyRopeTest, HonorsTokenStride) {
  RopeParams params;
  const RopeTable table = BuildRopeTable(params, 64, 10);
  // Two tokens of one head each, with a gap of 64 untouched elements between them.
  std::vector<bf16> x = RandomBf16(2 * 128, 10);
  const std::vector<bf16> before = x;
  const int64_t positions[] = {3, 4};
  ApplyRope(x.data(), 128, 2, 1, positions, table);
  for (int i = 64; i < 128; ++i) EXPECT_EQ(x[i].bits, before[i].bits);
  for (int i = 192; i < 256; ++i) EXPECT_EQ(x[i].bits, before[i].bits);
  int changed = 0;
  for (int i = 0; i < 64; ++i) changed += x[i].bits != before[i].bits;
  EXPECT_GT(changed, 0);
}

}  // namespace
}  // namespace moe::kernels::cpu
