// The CUDA backend of the engine's forward-pass seam (common/engine/forward_pass.h): the same step
// as the CPU AttentionBlock, on one CUDA device (docs/gpu.md#the-engine-device-seam).
//
// At creation the dense weights are uploaded once (BF16 as is; FP8 stays FP8 with its block scales
// repacked by PackWeightScales, no dequantized copy), the RoPE table is built on the host and
// uploaded, and the paged KV cache is allocated in device memory with the block count the engine
// chose (the engine keeps the KvCacheBlockPool and the block tables on the host). In Forward the
// hidden states stay on the device between layers; only the step's ids/positions/block tables go
// up, and the last positions' logits (fp32, for the CPU sampler) come down.
//
// MoE layers: the gate (router product + TopKSoftmax) runs on the device; the normed rows and the
// gate's ids/weights are then copied to the host for the existing MoeDispatcher (Dispatch/Combine),
// and the combined expert output is copied back. That host staging is the current state: a device
// transport (NCCL, common/transport/nccl/) would send from device memory instead.
//
// One micro-batch only (the engine refuses micro_batches 2 with a cuda device). Not thread-safe.
#ifndef MOE_COMMON_ENGINE_CUDA_CUDA_ATTENTION_BLOCK_H_
#define MOE_COMMON_ENGINE_CUDA_CUDA_ATTENTION_BLOCK_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/engine/forward_pass.h"
#include "common/engine/moe_dispatch.h"
#include "common/kernels/cuda/cuda_kernels.h"
#include "common/model/config.h"
#include "common/model/weights.h"

namespace moe::engine {

class CudaAttentionBlock : public ForwardPass {
 public:
  // Errors: FAILED_PRECONDITION naming the device when it cannot be used; RESOURCE_EXHAUSTED naming
  // the dense weights or kv_cache_bytes (with the device's free memory) when they do not fit;
  // INVALID_ARGUMENT naming a weight cuBLASLt cannot multiply (FP8 with in_features % 16 != 0).
  static absl::StatusOr<std::unique_ptr<CudaAttentionBlock>> Create(const model::ModelConfig& config,
                                                                    const model::DenseWeights& weights,
                                                                    MoeDispatcher* dispatcher,
                                                                    const CudaForwardOptions& options);
  ~CudaAttentionBlock() override;
  CudaAttentionBlock(const CudaAttentionBlock&) = delete;
  CudaAttentionBlock& operator=(const CudaAttentionBlock&) = delete;

  absl::Status Forward(uint64_t step, std::span<const BatchSegment> segments,
                       std::vector<float>* logits) override;
  int64_t max_positions() const override { return max_positions_; }
  int last_micro_batches() const override { return 1; }

  // Device bytes of the uploaded weights (RoPE table included) and of the KV cache.
  int64_t weight_bytes() const { return weight_bytes_; }
  int64_t kv_cache_bytes() const { return kv_cache_bytes_; }

 private:
  struct Layer {
    const bf16* input_layernorm = nullptr;
    const bf16* post_attention_layernorm = nullptr;
    const bf16* q_norm = nullptr;
    const bf16* k_norm = nullptr;
    kernels::cuda::DeviceLinearWeight q_proj, k_proj, v_proj, o_proj;
    kernels::cuda::DeviceLinearWeight router;                         // MoE layers (bf16 [E, H])
    kernels::cuda::DeviceLinearWeight gate_proj, up_proj, down_proj;  // dense layers
    kernels::cuda::DevicePagedKv kv;
  };
  // A grow-only device scratch buffer (reused across steps).
  struct Scratch {
    void* ptr = nullptr;
    size_t bytes = 0;
  };

  CudaAttentionBlock(const model::ModelConfig& config, MoeDispatcher* dispatcher, int ordinal);
  absl::Status Init(const model::DenseWeights& weights, const CudaForwardOptions& options);
  absl::StatusOr<void*> Alloc(size_t bytes, const std::string& what);
  absl::StatusOr<const bf16*> UploadBf16(const bf16* host, int64_t count, const std::string& what);
  absl::StatusOr<kernels::cuda::DeviceLinearWeight> UploadLinear(const LinearWeight& w,
                                                                 const std::string& what);
  // Makes `s` at least `bytes` large; returns its pointer.
  template <typename T>
  absl::StatusOr<T*> Ensure(Scratch* s, size_t count, const char* what);
  // The MLP of `layer` on d_h_ into d_branch_ (dense layers), or the MoE round through the host.
  absl::Status Mlp(uint64_t step, int64_t layer, int64_t n);

  const model::ModelConfig config_;
  MoeDispatcher* dispatcher_;
  int ordinal_;
  int64_t max_positions_ = 0;
  int64_t block_size_ = 0;
  int64_t weight_bytes_ = 0;
  int64_t kv_cache_bytes_ = 0;

  kernels::cuda::Stream stream_ = nullptr;
  std::unique_ptr<kernels::cuda::Blas> blas_;
  std::vector<void*> allocations_;  // weights, RoPE table, KV cache: freed in the destructor
  const bf16* embed_tokens_ = nullptr;
  const bf16* final_norm_ = nullptr;
  kernels::cuda::DeviceLinearWeight lm_head_;
  kernels::cuda::DeviceRopeTable rope_;
  std::vector<Layer> layers_;

  // Per-step device scratch.
  Scratch ids_, positions_, token_segment_, token_pos_, tables_;
  Scratch x_, h_, branch_, q_, k_, v_, attn_, mlp_gate_, mlp_up_, router_logits_, expert_ids_,
      expert_weights_;
  Scratch last_, logits_;
  // Host staging.
  std::vector<int32_t> host_ids_, host_segment_, host_pos_, host_tables_;
  std::vector<int64_t> host_positions_;
  std::vector<bf16> host_h_, host_branch_, host_logits_;
  std::vector<int32_t> host_expert_ids_;
  std::vector<float> host_expert_weights_;
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_CUDA_CUDA_ATTENTION_BLOCK_H_
