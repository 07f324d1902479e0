#include "common/engine/expert_compute_factory.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/engine/expert_block.h"
#include "common/model/weights.h"
#include "common/status/status_macros.h"
#if MOE_HAVE_CUDA
#include "common/engine/cuda/cuda_expert_block.h"
#include "common/kernels/cuda/cuda_kernels.h"
#endif

namespace moe::engine {

bool BuiltWithCuda() {
#if MOE_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

absl::Status CheckComputeDevice(const kernels::DeviceSpec& device, absl::string_view flag) {
  if (!device.is_cuda()) return absl::OkStatus();
#if MOE_HAVE_CUDA
  return kernels::cuda::CheckDevice(device.ordinal, flag);
#else
  return absl::FailedPreconditionError(absl::StrCat(flag, " ", device.ToString(),
                                                    ": this build has no CUDA support (configure with "
                                                    "-DMOE_WITH_CUDA=ON where nvcc is installed)"));
#endif
}

absl::StatusOr<std::unique_ptr<ExpertCompute>> CreateExpertCompute(
    const model::ModelConfig& config, std::unique_ptr<model::ExpertShardWeights> weights,
    const kernels::DeviceSpec& device) {
  RETURN_IF_ERROR(CheckComputeDevice(device));
  if (!device.is_cuda()) {
    model::PrefaultWeights(*weights);
    return std::make_unique<ExpertBlock>(config, std::move(weights));
  }
#if MOE_HAVE_CUDA
  ASSIGN_OR_RETURN(std::unique_ptr<CudaExpertBlock> block,
                   CudaExpertBlock::Create(config, *weights, device.ordinal));
  return std::unique_ptr<ExpertCompute>(std::move(block));
#else
  return absl::InternalError("unreachable: CheckComputeDevice accepted CUDA without CUDA");
#endif
}

}  // namespace moe::engine
