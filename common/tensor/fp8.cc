#include "common/tensor/fp8.h"

#include <array>
#include <cmath>

#include "common/tensor/bf16.h"

namespace moe {
namespace {

float DecodeE4M3(uint8_t code) {
  const int sign = code >> 7;
  const int exponent = (code >> 3) & 0xf;
  const int mantissa = code & 0x7;
  float value;
  if (exponent == 0xf && mantissa == 0x7) {
    value = std::nanf("");
  } else if (exponent == 0) {
    value = std::ldexp(static_cast<float>(mantissa) / 8.0f, -6);
  } else {
    value = std::ldexp(1.0f + static_cast<float>(mantissa) / 8.0f, exponent - 7);
  }
  return sign ? -value : value;
}

const std::array<float, 256>& Table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i) t[i] = DecodeE4M3(static_cast<uint8_t>(i));
    return t;
  }();
  return table;
}

}  // namespace

float Fp8E4M3ToFloat(uint8_t code) {
  return Table()[code];
}
const float* Fp8E4M3Table() {
  return Table().data();
}

uint8_t FloatToFp8E4M3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::fabs(f);
  if (a >= kFp8E4M3Max) return sign | 0x7e;
  // Smallest normal is 2^-6; subnormal step is 2^-9. Quantise to the representable grid of the
  // binade `a` falls in with round-half-to-even, via nearbyint in the default rounding mode.
  int exp;
  std::frexp(a, &exp);  // a = m * 2^exp, m in [0.5, 1)
  int e = exp - 1;      // a in [2^e, 2^(e+1))
  if (e < -6) e = -6;   // subnormal range shares the 2^-6 binade's step
  const float step = std::ldexp(1.0f, e - 3);
  float q = std::nearbyint(a / step) * step;  // exact: a/step is exact in float for these ranges
  if (q >= kFp8E4M3Max) q = kFp8E4M3Max;
  // Encode q exactly.
  if (q == 0.0f) return sign;
  int qexp;
  float qm = std::frexp(q, &qexp);  // q = qm * 2^qexp
  int biased = qexp - 1 + 7;
  if (biased <= 0) {
    const int mantissa = static_cast<int>(std::ldexp(q, 9));  // q / 2^-9
    return sign | static_cast<uint8_t>(mantissa);
  }
  const int mantissa = static_cast<int>((qm * 2.0f - 1.0f) * 8.0f);
  return sign | static_cast<uint8_t>(biased << 3) | static_cast<uint8_t>(mantissa);
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = (h >> 15) & 1, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  float value;
  if (exponent == 0) {
    value = std::ldexp(static_cast<float>(mantissa), -24);
  } else if (exponent == 0x1f) {
    value = mantissa ? std::nanf("") : INFINITY;
  } else {
    value = std::ldexp(static_cast<float>(mantissa | 0x400), static_cast<int>(exponent) - 25);
  }
  return sign ? -value : value;
}

uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  const uint32_t sign = (x >> 16) & 0x8000;
  if (std::isnan(f)) return static_cast<uint16_t>(sign | 0x7e00);
  float a = std::fabs(f);
  if (a >= 65520.0f) return static_cast<uint16_t>(sign | 0x7c00);
  if (a < std::ldexp(1.0f, -14)) {
    const uint32_t m = static_cast<uint32_t>(std::nearbyint(std::ldexp(a, 24)));
    return static_cast<uint16_t>(sign | m);  // m may round up into the smallest normal: still right
  }
  int exp;
  std::frexp(a, &exp);
  const float step = std::ldexp(1.0f, exp - 11);
  const float q = std::nearbyint(a / step) * step;
  int qexp;
  const float qm = std::frexp(q, &qexp);
  const uint32_t biased = static_cast<uint32_t>(qexp - 1 + 15);
  if (biased >= 0x1f) return static_cast<uint16_t>(sign | 0x7c00);
  const uint32_t mantissa = static_cast<uint32_t>((qm * 2.0f - 1.0f) * 1024.0f);
  return static_cast<uint16_t>(sign | (biased << 10) | mantissa);
}

}  // namespace moe
