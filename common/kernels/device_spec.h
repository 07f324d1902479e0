// The compute device of an engine: `--device cpu|cuda[:N]` (and MOE_DEVICE). Parsed here, without
// CUDA, so that every build accepts and rejects the same spellings; whether cuda:N exists on this
// machine is checked by kernels::cuda::CheckDevice (common/kernels/cuda/cuda_kernels.h).
#ifndef MOE_COMMON_KERNELS_DEVICE_SPEC_H_
#define MOE_COMMON_KERNELS_DEVICE_SPEC_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moe::kernels {

struct DeviceSpec {
  enum class Kind { kCpu, kCuda };
  Kind kind = Kind::kCpu;
  int ordinal = 0;  // CUDA device index; 0 for the CPU

  bool is_cuda() const { return kind == Kind::kCuda; }
  // "cpu" or "cuda:N" (always with the ordinal).
  std::string ToString() const;
  bool operator==(const DeviceSpec&) const = default;
};

// Accepts "cpu", "cuda" (= cuda:0) and "cuda:N" with N a decimal in [0, 1023], case-sensitive,
// no spaces. Anything else is INVALID_ARGUMENT naming `flag` (e.g. "--device") and the value.
absl::StatusOr<DeviceSpec> ParseDeviceSpec(absl::string_view text, absl::string_view flag = "--device");

}  // namespace moe::kernels

#endif  // MOE_COMMON_KERNELS_DEVICE_SPEC_H_
