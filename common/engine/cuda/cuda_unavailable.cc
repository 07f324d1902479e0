// The CUDA backend's entry points in a build without CUDA (MOE_WITH_CUDA off or no nvcc): asking
// for a cuda device is FAILED_PRECONDITION saying so, never a crash.
#include "absl/strings/str_cat.h"
#include "common/engine/forward_pass.h"

namespace moe::engine {
namespace {

absl::Status NoCuda(const kernels::DeviceSpec& device) {
  return absl::FailedPreconditionError(
      absl::StrCat("device ", device.ToString(),
                   ": this build has no CUDA support (configure with -DMOE_WITH_CUDA=ON where the CUDA "
                   "toolkit is installed), use --device cpu"));
}

}  // namespace

absl::Status CheckEngineDevice(const kernels::DeviceSpec& device) {
  if (!device.is_cuda()) return absl::OkStatus();
  return NoCuda(device);
}

absl::StatusOr<std::unique_ptr<ForwardPass>> CreateCudaForwardPass(const model::ModelConfig&,
                                                                   const model::DenseWeights&, MoeDispatcher*,
                                                                   const CudaForwardOptions& options) {
  return NoCuda(options.device);
}

}  // namespace moe::engine
