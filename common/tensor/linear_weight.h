// The weight of one linear layer as kernels consume it: y[m, n] = sum_k x[m, k] * W[n, k].
#ifndef MOE_COMMON_TENSOR_LINEAR_WEIGHT_H_
#define MOE_COMMON_TENSOR_LINEAR_WEIGHT_H_

#include <cstdint>

#include "common/tensor/dtype.h"

namespace moe {

inline constexpr int64_t kFp8BlockSize = 128;

struct LinearWeight {
  // kBF16: `data` is bf16 [out_features, in_features], row-major.
  // kF8E4M3: `data` is e4m3fn codes [out_features, in_features] and `scale_inv` is float32
  //   [ceil(out/128), ceil(in/128)]; W[r, c] = fp8(data[r, c]) * scale_inv[r / 128, c / 128].
  DType dtype = DType::kUnknown;
  int64_t out_features = 0;
  int64_t in_features = 0;
  const void* data = nullptr;
  const float* scale_inv = nullptr;

  int64_t ScaleCols() const { return (in_features + kFp8BlockSize - 1) / kFp8BlockSize; }
  int64_t ScaleRows() const { return (out_features + kFp8BlockSize - 1) / kFp8BlockSize; }
  // Bytes a kernel must read to apply this weight once (for roofline accounting).
  int64_t WeightBytes() const {
    int64_t bytes = out_features * in_features * static_cast<int64_t>(DTypeSize(dtype));
    if (dtype == DType::kF8E4M3) bytes += ScaleRows() * ScaleCols() * 4;
    return bytes;
  }
};

}  // namespace moe

#endif  // MOE_COMMON_TENSOR_LINEAR_WEIGHT_H_
