#include "common/tensor/fp8.h"

#include <cmath>

#include "common/tensor/bf16.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

TEST(Fp8Test, DecodesKnownCodes) {
  EXPECT_EQ(Fp8E4M3ToFloat(0x00), 0.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x38), 1.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x7e), 448.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0xfe), -448.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_TRUE(std::isnan(Fp8E4M3ToFloat(0x7f)));
  EXPECT_TRUE(std::isnan(Fp8E4M3ToFloat(0xff)));
}

TEST(Fp8Test, EncodeInvertsDecodeForEveryFiniteCode) {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7f) == 0x7f) continue;
    const float value = Fp8E4M3ToFloat(static_cast<uint8_t>(code));
    if (code == 0x80) {  // -0 encodes to -0
      EXPECT_EQ(FloatToFp8E4M3(value), 0x80);
      continue;
    }
    EXPECT_EQ(FloatToFp8E4M3(value), code) << value;
  }
}

TEST(Fp8Test, EncodeRoundsHalfToEvenAndSaturates) {
  // Between 1.0 (0x38) and 1.125 (0x39) the midpoint 1.0625 rounds to even (0x38).
  EXPECT_EQ(FloatToFp8E4M3(1.0625f), 0x38);
  // Between 1.125 (0x39) and 1.25 (0x3a) the midpoint rounds to even (0x3a).
  EXPECT_EQ(FloatToFp8E4M3(1.1875f), 0x3a);
  EXPECT_EQ(FloatToFp8E4M3(1e9f), 0x7e);
  EXPECT_EQ(FloatToFp8E4M3(-1e9f), 0xfe);
  EXPECT_EQ(FloatToFp8E4M3(std::ldexp(1.0f, -11)), 0x00);  // below half the smallest subnormal
}

TEST(Bf16Test, RoundsToNearestEven) {
  EXPECT_EQ(FloatToBF16(1.0f).bits, 0x3f80);
  // 1 + 2^-8 is the midpoint between 1 and 1 + 2^-7: ties to even (1.0).
  EXPECT_EQ(FloatToBF16(1.0f + std::ldexp(1.0f, -8)).bits, 0x3f80);
  EXPECT_EQ(FloatToBF16(1.0f + 3 * std::ldexp(1.0f, -8)).bits, 0x3f82);
  EXPECT_TRUE(std::isnan(BF16ToFloat(FloatToBF16(std::nanf("")))));
}

TEST(HalfTest, RoundTripsExactValues) {
  for (float f : {0.0f, 1.0f, -2.5f, 65504.0f, std::ldexp(1.0f, -24), std::ldexp(1.0f, -14)}) {
    EXPECT_EQ(HalfToFloat(FloatToHalf(f)), f) << f;
  }
}

}  // namespace
}  // namespace moe
