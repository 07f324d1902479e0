// The CUDA experts plugin's entry points (common/engine/compute/cuda_experts_plugin.h).
#include "common/engine/compute/cuda_experts_plugin.h"

#include <utility>

#include "common/engine/cuda/cuda_expert_block.h"
#include "common/kernels/cuda/cuda_kernels.h"

extern "C" {

__attribute__((visibility("default"))) int moe_cuda_experts_abi() {
  return moe::engine::kCudaExpertsPluginAbi;
}

__attribute__((visibility("default"))) void moe_cuda_experts_check_device(int ordinal, const char* flag,
                                                                          absl::Status* out) {
  *out = moe::kernels::cuda::CheckDevice(ordinal, flag);
}

__attribute__((visibility("default"))) void moe_cuda_experts_create(
    const moe::model::ModelConfig* config, const moe::model::ExpertShardWeights* weights, int ordinal,
    absl::StatusOr<std::unique_ptr<moe::engine::ExpertCompute>>* out) {
  absl::StatusOr<std::unique_ptr<moe::engine::CudaExpertBlock>> block =
      moe::engine::CudaExpertBlock::Create(*config, *weights, ordinal);
  if (!block.ok()) {
    *out = block.status();
    return;
  }
  *out = std::unique_ptr<moe::engine::ExpertCompute>(*std::move(block));
}

}  // extern "C"
