// Typed views of a model's weights, resolved from a checkpoint and validated against the config.
// Dense weights (embeddings, attention, norms, router, dense MLPs, lm_head) live on attention
// workers; expert weights are loaded per shard [first_expert, first_expert + num_experts).
//
// Tensors stay where the checkpoint keeps them (mmap) when already in their compute dtype (BF16
// or F8_E4M3); others (F32/F16 norms, BF16 scales, ...) are converted once into owned buffers:
// bf16 for dense tensors, float32 for FP8 scales.
#ifndef MOE_COMMON_MODEL_WEIGHTS_H_
#define MOE_COMMON_MODEL_WEIGHTS_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/checkpoint.h"
#include "common/model/config.h"
#include "common/model/weight_warmup.h"
#include "common/tensor/bf16.h"
#include "common/tensor/linear_weight.h"

namespace moe::model {

struct MlpWeights {        // SwiGLU: down(silu(gate(x)) * up(x))
  LinearWeight gate_proj;  // [I, H]
  LinearWeight up_proj;    // [I, H]
  LinearWeight down_proj;  // [H, I]
};

struct AttentionLayerWeights {
  const bf16* input_layernorm = nullptr;           // [H]
  LinearWeight q_proj;                             // [Hq*D, H]
  LinearWeight k_proj;                             // [Hkv*D, H]
  LinearWeight v_proj;                             // [Hkv*D, H]
  LinearWeight o_proj;                             // [H, Hq*D]
  const bf16* q_norm = nullptr;                    // [D]
  const bf16* k_norm = nullptr;                    // [D]
  const bf16* post_attention_layernorm = nullptr;  // [H]
  // MoE layers: router weight bf16 [E, H] (never quantized). Null on dense layers.
  const bf16* router = nullptr;
  // Dense (non-MoE) layers: the MLP. Unset (dtype kUnknown) on MoE layers.
  MlpWeights dense_mlp;
};

// Everything an attention worker needs.
struct DenseWeights {
  const bf16* embed_tokens = nullptr;  // [V, H]
  std::vector<AttentionLayerWeights> layers;
  const bf16* final_norm = nullptr;  // [H]
  LinearWeight lm_head;              // [V, H] bf16; aliases embed_tokens when tied

  // Owned conversions (see file comment). Views above may point into these.
  std::vector<std::unique_ptr<uint8_t[]>> owned;
  // The huge-page copy the views point into once PrefaultWeights made one (MOE_WEIGHTS_MEMORY).
  std::shared_ptr<const ResidentCopy> resident;
};

// Experts [first_expert, first_expert + num_experts) of every MoE layer.
struct ExpertShardWeights {
  int64_t first_expert = 0;
  int64_t num_experts = 0;
  // layers[l][e - first_expert]; empty vector for dense layers.
  std::vector<std::vector<MlpWeights>> layers;
  std::vector<std::unique_ptr<uint8_t[]>> owned;
  std::shared_ptr<const ResidentCopy> resident;  // as in DenseWeights
};

// Resolves and validates the dense part. Errors: NOT_FOUND naming a missing tensor,
// INVALID_ARGUMENT naming a tensor with the wrong shape or dtype.
absl::StatusOr<std::unique_ptr<DenseWeights>> LoadDenseWeights(const Checkpoint& checkpoint,
                                                               const ModelConfig& config);
// Resolves one expert shard. Accepts per-expert names (mlp.experts.{e}.gate_proj.weight) and the
// transformers v5 fused names (mlp.experts.gate_up_proj [E, 2I, H], mlp.experts.down_proj [E, H, I]).
absl::StatusOr<std::unique_ptr<ExpertShardWeights>> LoadExpertShard(const Checkpoint& checkpoint,
                                                                    const ModelConfig& config,
                                                                    int64_t first_expert,
                                                                    int64_t num_experts);

// WarmUpOptions with `memory` from MOE_WEIGHTS_MEMORY (WeightsMemoryFromEnv).
WarmUpOptions WeightsWarmUpOptions();

// Brings every byte the linear weights view into memory and into this process's page tables now,
// with several threads (weight_warmup.h), so the first request that routes to a cold expert does
// not wait on the disk, and resident memory is what the worker will use: all dense weights, or
// exactly the shard's experts. With WeightsMemory::kHugePages the bytes are copied into a
// huge-page arena (`resident`) and the views repointed there, so call this before anything keeps a
// pointer into the weights. Reports progress in bytes to the load-progress sink; returns what it
// read and how fast.
WarmUpResult PrefaultWeights(DenseWeights& weights, const WarmUpOptions& options = WeightsWarmUpOptions());
WarmUpResult PrefaultWeights(ExpertShardWeights& weights,
                             const WarmUpOptions& options = WeightsWarmUpOptions());

}  // namespace moe::model

#endif  // MOE_COMMON_MODEL_WEIGHTS_H_
