// Element types of checkpoint tensors and activations.
#ifndef MOE_COMMON_TENSOR_DTYPE_H_
#define MOE_COMMON_TENSOR_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace moe {

enum class DType : uint8_t {
  kUnknown = 0,
  kBool,
  kU8,
  kI8,
  kI16,
  kI32,
  kI64,
  kF16,
  kBF16,
  kF32,
  kF64,
  kF8E4M3,  // OCP float8_e4m3fn: no infinities, 0x7F/0xFF are NaN, max 448.
  kF8E5M2,
};

// Bytes per element.
size_t DTypeSize(DType dtype);
// The safetensors spelling ("BF16", "F8_E4M3", ...).
std::string_view DTypeName(DType dtype);
// Parses a safetensors dtype string; nullopt for anything unknown (callers must reject it).
std::optional<DType> ParseSafetensorsDType(std::string_view name);

}  // namespace moe

#endif  // MOE_COMMON_TENSOR_DTYPE_H_
