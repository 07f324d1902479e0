// Internal to moe_kernels_cuda: CUDA errors as absl::Status, and the argument checks every entry
// point makes before it launches anything.
#ifndef MOE_COMMON_KERNELS_CUDA_CUDA_STATUS_H_
#define MOE_COMMON_KERNELS_CUDA_CUDA_STATUS_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "common/status/status_macros.h"

namespace moe::kernels::cuda::internal {

// OK for cudaSuccess; otherwise a status whose message is "<what>: <cudaErrorName>: <string>".
// Out of memory is RESOURCE_EXHAUSTED, a missing driver/device FAILED_PRECONDITION, an invalid
// value INVALID_ARGUMENT, anything else INTERNAL.
absl::Status CudaStatus(cudaError_t err, absl::string_view what);
// The status of the last launch on this thread (cudaGetLastError), named `kernel`.
absl::Status LaunchStatus(absl::string_view kernel);

inline cudaStream_t AsCuda(void* stream) {
  return static_cast<cudaStream_t>(stream);
}

// INVALID_ARGUMENT "<fn>: <arg> ..." helpers.
absl::Status BadArg(absl::string_view fn, absl::string_view arg, absl::string_view why);
absl::Status CheckPtr(absl::string_view fn, absl::string_view arg, const void* ptr);
absl::Status CheckPositive(absl::string_view fn, absl::string_view arg, int64_t value);
absl::Status CheckNonNegative(absl::string_view fn, absl::string_view arg, int64_t value);
// stride >= width (row strides).
absl::Status CheckStride(absl::string_view fn, absl::string_view arg, int64_t stride, int64_t width);

}  // namespace moe::kernels::cuda::internal

#endif  // MOE_COMMON_KERNELS_CUDA_CUDA_STATUS_H_
