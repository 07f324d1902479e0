// Typed views of a model's weights, resolved from a checkpoint and validated against the config.
// Dense weights (embeddings, attention, norms, router, dense MLPs, lm_head) live on attention
// workers; expert weights are loaded per shard [first_expert, first_expert + num_experts).
//
// Tensors stay where the checkpoint keeps them (mmap) when already in their compute dtype (BF16
// or F8_E4M3); others (F32/F16 norms, BF16 scales, ...) are converted once into owned buffers:
// bf16 for dense tensors, float32 for FP8 scales.
#ifndef MOE_COMMON_MODEL_WEIGHTS_H_
#define MOE_COMMON_MODEL_WEIGHTS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
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
// exactly the shard's experts. With either huge-page choice the bytes are copied now into a
// huge-page arena (`resident`) and the views repointed there, so call this before anything keeps a
// pointer into the weights (a worker that serves before the copy is made uses kMapped here, then
// HugePageSwitch). Reports progress in bytes to the load-progress sink; returns what it read and
// how fast.
WarmUpResult PrefaultWeights(DenseWeights& weights, const WarmUpOptions& options = WeightsWarmUpOptions());
WarmUpResult PrefaultWeights(ExpertShardWeights& weights,
                             const WarmUpOptions& options = WeightsWarmUpOptions());

// MOE_WEIGHTS_MEMORY=huge_pages: the huge-page copy made while the worker already serves. The
// weights are faulted in place first (PrefaultWeights with kMapped), so no request waits on the
// disk; one background thread then copies them into a huge-page arena, and the owner switches its
// views over at a point of its choosing (docs/operations.md#loading-the-weights):
//   - the engine between two steps, in place (Apply(DenseWeights&));
//   - an expert block, which serves rounds concurrently, by swapping in a relocated snapshot
//     (Relocated, then ReleaseSource) that each round takes at its start.
// After the switch the source pages leave the page tables (ReleaseSource): a reader still on the
// old views faults them back in from the page cache, so it is slow, never wrong.
//
// Thread safety: ready() from any thread; the rest from the owner's thread, except `on_ready`,
// which runs on the copying thread.
class HugePageSwitch {
 public:
  using OnReady = std::function<void(HugePageSwitch&)>;
  // Starts copying every linear weight of `weights` (the ranges PrefaultWeights covers). `weights`
  // must stay where it is until the switch is applied or destroyed. `on_ready`, if any, runs on
  // the copying thread once the copy is complete (never when it was stopped or could not be made).
  static std::unique_ptr<HugePageSwitch> Start(const DenseWeights& weights, OnReady on_ready = {});
  static std::unique_ptr<HugePageSwitch> Start(const ExpertShardWeights& weights, OnReady on_ready = {});
  HugePageSwitch(const HugePageSwitch&) = delete;
  HugePageSwitch& operator=(const HugePageSwitch&) = delete;
  // Stops a copy still running (after the chunk in hand) and waits for the thread.
  ~HugePageSwitch();

  // The copy is complete. Stays false when the arena could not be allocated (logged on stderr;
  // the worker serves from the mapping).
  bool ready() const { return ready_.load(std::memory_order_acquire); }
  // Waits until the copying thread is done (ready, or no copy): a benchmark's steady state. Not
  // from `on_ready`.
  void Wait();

  // Once ready(): points the views of `weights` (those given to Start) at the copy, then releases
  // the source. Only where nothing reads the views.
  void Apply(DenseWeights& weights);
  // Once ready(): new weights equal to `weights` (those given to Start) but for views into the
  // copy; `weights` stays alive with them.
  std::shared_ptr<const ExpertShardWeights> Relocated(
      std::shared_ptr<const ExpertShardWeights> weights) const;
  // Drops the source's pages from the page tables (those outside owned conversions).
  void ReleaseSource() const;

 private:
  HugePageSwitch(std::string stage, std::vector<MemoryRange> ranges, OnReady on_ready);

  const std::vector<MemoryRange> ranges_;  // the source, release_after_copy set where it may go
  std::atomic<bool> stop_{false};
  std::atomic<bool> ready_{false};
  std::shared_ptr<const ResidentCopy> copy_;  // written before ready_
  std::thread thread_;                        // last: starts once the rest is initialized
};

}  // namespace moe::model

#endif  // MOE_COMMON_MODEL_WEIGHTS_H_
