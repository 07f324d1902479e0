// The CUDA backend plugin's entry points (common/engine/compute/cuda_backend_plugin.h).
#include "common/engine/compute/cuda_backend_plugin.h"

#include <utility>

#include "common/engine/cuda/cuda_attention_block.h"
#include "common/engine/cuda/cuda_expert_block.h"
#include "common/kernels/cuda/cuda_kernels.h"
#if MOE_HAVE_NCCL
#include "absl/strings/str_cat.h"
#include "common/transport/nccl/cuda_nccl_api.h"
#endif

extern "C" {

__attribute__((visibility("default"))) int moe_cuda_backend_abi() {
  return moe::engine::kCudaBackendPluginAbi;
}

__attribute__((visibility("default"))) void moe_cuda_backend_check_device(int ordinal, const char* flag,
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

__attribute__((visibility("default"))) void moe_cuda_forward_create(
    const moe::model::ModelConfig* config, const moe::model::DenseWeights* weights,
    moe::engine::MoeDispatcher* dispatcher, const moe::engine::CudaForwardOptions* options,
    absl::StatusOr<std::unique_ptr<moe::engine::ForwardPass>>* out) {
  absl::StatusOr<std::unique_ptr<moe::engine::CudaAttentionBlock>> block =
      moe::engine::CudaAttentionBlock::Create(*config, *weights, dispatcher, *options);
  if (!block.ok()) {
    *out = block.status();
    return;
  }
  *out = std::unique_ptr<moe::engine::ForwardPass>(*std::move(block));
}

#if MOE_HAVE_NCCL
__attribute__((visibility("default"))) void moe_cuda_nccl_api_create(
    int ordinal, const char* flag, absl::StatusOr<std::unique_ptr<moe::transport::NcclApi>>* out) {
  const int devices = moe::transport::CudaDeviceCount();
  if (ordinal < 0 || ordinal >= devices) {
    *out = absl::FailedPreconditionError(absl::StrCat(flag, ": nccl needs CUDA device ", ordinal,
                                                      ", this machine has ", devices,
                                                      " (no driver, or fewer devices)"));
    return;
  }
  *out = std::unique_ptr<moe::transport::NcclApi>(std::make_unique<moe::transport::CudaNcclApi>(ordinal));
}
#endif

}  // extern "C"
