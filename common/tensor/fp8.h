// float8_e4m3fn (OCP "fn" variant: no infinities, 0x7F/0xFF NaN, max finite 448).
#ifndef MOE_COMMON_TENSOR_FP8_H_
#define MOE_COMMON_TENSOR_FP8_H_

#include <cstdint>

namespace moe {

inline constexpr float kFp8E4M3Max = 448.0f;

// Exact decode of an e4m3fn code (a table lookup).
float Fp8E4M3ToFloat(uint8_t code);
// The 256-entry decode table, for kernels.
const float* Fp8E4M3Table();
// Encode with round-to-nearest-even after clamping to [-448, 448] (as torch's saturating cast
// after torch.clamp does). NaN encodes to 0x7F.
uint8_t FloatToFp8E4M3(float f);

}  // namespace moe

#endif  // MOE_COMMON_TENSOR_FP8_H_
