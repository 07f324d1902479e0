#include "common/tensor/dtype.h"

#include <array>
#include <utility>

namespace moe {
namespace {
struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t size;
};
constexpr std::array<DTypeInfo, 12> kInfos = {{
    {DType::kBool, "BOOL", 1},
    {DType::kU8, "U8", 1},
    {DType::kI8, "I8", 1},
    {DType::kI16, "I16", 2},
    {DType::kI32, "I32", 4},
    {DType::kI64, "I64", 8},
    {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2},
    {DType::kF32, "F32", 4},
    {DType::kF64, "F64", 8},
    {DType::kF8E4M3, "F8_E4M3", 1},
    {DType::kF8E5M2, "F8_E5M2", 1},
}};
}  // namespace

size_t DTypeSize(DType dtype) {
  for (const auto& info : kInfos)
    if (info.dtype == dtype) return info.size;
  return 0;
}

std::string_view DTypeName(DType dtype) {
  for (const auto& info : kInfos)
    if (info.dtype == dtype) return info.name;
  return "UNKNOWN";
}

std::optional<DType> ParseSafetensorsDType(std::string_view name) {
  for (const auto& info : kInfos)
    if (info.name == name) return info.dtype;
  return std::nullopt;
}

}  // namespace moe
