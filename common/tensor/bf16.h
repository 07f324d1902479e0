// bfloat16 and float16 scalar conversions (round to nearest even, NaN preserved as quiet NaN).
#ifndef MOE_COMMON_TENSOR_BF16_H_
#define MOE_COMMON_TENSOR_BF16_H_

#include <cstdint>
#include <cstring>

namespace moe {

// A bfloat16 value: the top 16 bits of an IEEE float32. Trivially copyable, 2 bytes.
struct bf16 {
  uint16_t bits;
};
static_assert(sizeof(bf16) == 2);

inline float BF16ToFloat(bf16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Round-to-nearest-even, as torch's float -> bfloat16 conversion does.
inline bf16 FloatToBF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40)};  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}

// Rounds a float to the nearest bf16 and back: the value a bf16 tensor op would produce.
inline float RoundBF16(float f) {
  return BF16ToFloat(FloatToBF16(f));
}

// IEEE half precision.
float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);

}  // namespace moe

#endif  // MOE_COMMON_TENSOR_BF16_H_
