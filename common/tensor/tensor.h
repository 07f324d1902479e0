// Non-owning views of tensors in checkpoint or activation memory.
#ifndef MOE_COMMON_TENSOR_TENSOR_H_
#define MOE_COMMON_TENSOR_TENSOR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/tensor/dtype.h"

namespace moe {

// A row-major (C order) tensor that someone else owns (an mmap'd checkpoint, an arena).
struct TensorView {
  DType dtype = DType::kUnknown;
  std::vector<int64_t> shape;
  const void* data = nullptr;

  int64_t NumElements() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  size_t NumBytes() const { return static_cast<size_t>(NumElements()) * DTypeSize(dtype); }
};

// "[2048, 128]"
std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace moe

#endif  // MOE_COMMON_TENSOR_TENSOR_H_
