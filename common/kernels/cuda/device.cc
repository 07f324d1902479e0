// Devices, streams, memory, and the error mapping of moe_kernels_cuda (host code only).
#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/kernels/cuda/cuda_kernels.h"
#include "common/kernels/cuda/cuda_status.h"

namespace moe::kernels::cuda {
namespace internal {

absl::Status CudaStatus(cudaError_t err, absl::string_view what) {
  if (err == cudaSuccess) return absl::OkStatus();
  const std::string message = absl::StrCat(what, ": ", cudaGetErrorName(err), ": ", cudaGetErrorString(err));
  switch (err) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(message);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInvalidDevice:
    case cudaErrorDevicesUnavailable:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice:
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
      return absl::FailedPreconditionError(message);
    case cudaErrorInvalidValue:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status LaunchStatus(absl::string_view kernel) {
  return CudaStatus(cudaGetLastError(), absl::StrCat("launching ", kernel));
}

absl::Status BadArg(absl::string_view fn, absl::string_view arg, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(fn, ": ", arg, " ", why));
}
absl::Status CheckPtr(absl::string_view fn, absl::string_view arg, const void* ptr) {
  return ptr != nullptr ? absl::OkStatus() : BadArg(fn, arg, "is null");
}
absl::Status CheckPositive(absl::string_view fn, absl::string_view arg, int64_t value) {
  return value > 0 ? absl::OkStatus() : BadArg(fn, arg, absl::StrCat("must be positive, got ", value));
}
absl::Status CheckNonNegative(absl::string_view fn, absl::string_view arg, int64_t value) {
  return value >= 0 ? absl::OkStatus() : BadArg(fn, arg, absl::StrCat("must be >= 0, got ", value));
}
absl::Status CheckStride(absl::string_view fn, absl::string_view arg, int64_t stride, int64_t width) {
  return stride >= width
             ? absl::OkStatus()
             : BadArg(fn, arg, absl::StrCat("(", stride, ") is smaller than the row width ", width));
}

}  // namespace internal

using internal::CudaStatus;

absl::StatusOr<int> DeviceCount() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) return CudaStatus(err, "counting CUDA devices (cudaGetDeviceCount)");
  if (count == 0) return absl::FailedPreconditionError("counting CUDA devices: no CUDA device is visible");
  return count;
}

absl::Status CheckDevice(int ordinal, absl::string_view flag) {
  const std::string name = absl::StrCat(flag, ": cuda:", ordinal);
  if (ordinal < 0) return absl::InvalidArgumentError(absl::StrCat(name, " is not a device index"));
  absl::StatusOr<int> count = DeviceCount();
  if (!count.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(name, " is not available: ", count.status().message()));
  }
  if (ordinal >= *count) {
    return absl::FailedPreconditionError(absl::StrCat(
        name, " does not exist: this machine has ", *count, " CUDA device", *count == 1 ? "" : "s",
        " (cuda:0", *count > 1 ? absl::StrCat("..cuda:", *count - 1) : "", ")"));
  }
  return absl::OkStatus();
}

absl::Status SetDevice(int ordinal) {
  RETURN_IF_ERROR(CheckDevice(ordinal));
  return CudaStatus(cudaSetDevice(ordinal), absl::StrCat("cudaSetDevice(", ordinal, ")"));
}

absl::StatusOr<std::string> DeviceDescription(int ordinal) {
  RETURN_IF_ERROR(CheckDevice(ordinal));
  cudaDeviceProp prop{};
  RETURN_IF_ERROR(CudaStatus(cudaGetDeviceProperties(&prop, ordinal), "cudaGetDeviceProperties"));
  return absl::StrFormat("%s (sm_%d%d, %.1f GiB)", prop.name, prop.major, prop.minor,
                         static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
}

absl::Status MemoryInfo(size_t* free_bytes, size_t* total_bytes) {
  return CudaStatus(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
}

absl::StatusOr<Stream> CreateStream() {
  cudaStream_t stream = nullptr;
  RETURN_IF_ERROR(
      CudaStatus(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags"));
  return static_cast<Stream>(stream);
}

absl::Status DestroyStream(Stream stream) {
  if (stream == nullptr) return absl::OkStatus();
  return CudaStatus(cudaStreamDestroy(internal::AsCuda(stream)), "cudaStreamDestroy");
}

absl::Status Synchronize(Stream stream) {
  return CudaStatus(cudaStreamSynchronize(internal::AsCuda(stream)), "cudaStreamSynchronize");
}

absl::StatusOr<void*> Malloc(size_t bytes, absl::string_view what) {
  void* ptr = nullptr;
  const cudaError_t err = cudaMalloc(&ptr, bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later calls do not see it
    size_t free_bytes = 0, total_bytes = 0;
    std::string mem;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
      mem = absl::StrFormat(" (%.2f GiB free of %.2f GiB)", free_bytes / 1073741824.0,
                            total_bytes / 1073741824.0);
    }
    cudaGetLastError();
    return CudaStatus(err, absl::StrFormat("allocating %.3f GiB of device memory for %s%s",
                                           bytes / 1073741824.0, what, mem));
  }
  return ptr;
}

void Free(void* ptr) {
  if (ptr != nullptr) cudaFree(ptr);
}

absl::Status CopyToDevice(void* dst, const void* src, size_t bytes, Stream stream) {
  return CudaStatus(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, internal::AsCuda(stream)),
                    "cudaMemcpyAsync host->device");
}
absl::Status CopyToHost(void* dst, const void* src, size_t bytes, Stream stream) {
  RETURN_IF_ERROR(
      CudaStatus(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, internal::AsCuda(stream)),
                 "cudaMemcpyAsync device->host"));
  return Synchronize(stream);
}
absl::Status CopyDeviceToDevice(void* dst, const void* src, size_t bytes, Stream stream) {
  return CudaStatus(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, internal::AsCuda(stream)),
                    "cudaMemcpyAsync device->device");
}

}  // namespace moe::kernels::cuda
