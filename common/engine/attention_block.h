// The dense side of the model as an attention worker runs it: embeddings, per layer attention over
// the paged KV cache and the MoE gate (the experts are reached through MoeDispatcher), dense MLPs
// for non-MoE layers, the final norm and lm_head. One Forward() is one engine step over a batch of
// segments (chunked prefill and decode mixed); every kernel is row-wise batch-invariant, so a
// sequence's logits do not depend on what else is in the batch or how its prompt was chunked.
#ifndef MOE_COMMON_ENGINE_ATTENTION_BLOCK_H_
#define MOE_COMMON_ENGINE_ATTENTION_BLOCK_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "common/engine/forward_pass.h"
#include "common/engine/kv_cache.h"
#include "common/engine/moe_dispatch.h"
#include "common/kernels/cpu/kernels.h"
#include "common/model/config.h"
#include "common/model/weights.h"

namespace moe::engine {

// The RoPE parameters of a model config (shared by the CPU and CUDA backends).
kernels::cpu::RopeParams RopeParamsOf(const model::ModelConfig& config);

// The CPU backend of the ForwardPass seam.
class AttentionBlock : public ForwardPass {
 public:
  // None of the pointers is owned. `dispatcher` may be null for dense models. `micro_batches` (1 or
  // 2): with 2, a step of at least two sequences is split into two micro-batches of about half the
  // tokens each (at sequence boundaries) that ping-pong through the MoE layers: while one
  // micro-batch's experts compute, the other's attention runs (docs/architecture.md#micro-batches).
  // Every row of every kernel is independent of the other rows, so the outputs are the same bits
  // either way.
  AttentionBlock(const model::ModelConfig& config, const model::DenseWeights* weights, KvCache* kv_cache,
                 MoeDispatcher* dispatcher, int micro_batches = 1);

  // Runs the step. logits: [segments with want_logits, vocab] fp32 (the bf16 lm_head output
  // upcast), in segment order. Errors from the data plane (UNAVAILABLE) fail the whole step.
  absl::Status Forward(uint64_t step, std::span<const BatchSegment> segments,
                       std::vector<float>* logits) override;

  int64_t max_positions() const override { return rope_.max_positions; }
  // Micro-batches the last Forward ran (1 or 2).
  int last_micro_batches() const override { return last_micro_batches_; }

 private:
  // One micro-batch's rows and its scratch (reused across steps: grown, never shrunk; a fresh
  // multi-100 KB allocation per step is an mmap and a page fault per page, which showed up at ~10%
  // of a decode step).
  struct MicroBatch {
    std::span<const BatchSegment> segments;
    int64_t num_tokens = 0;
    std::vector<int32_t> ids;
    std::vector<int64_t> positions;
    std::vector<bf16> x, h, branch, q, k, v, attn, router_logits;
    std::vector<int32_t> expert_ids;
    std::vector<float> expert_weights;
    std::vector<bf16> mlp_gate, mlp_up;
    DispatchHandle pending;  // the MoE round in flight, between Dispatch and Combine
  };
  // Embeds the micro-batch's tokens into mb->x.
  void Prepare(MicroBatch* mb);
  // Layer `layer`'s attention (x += attention) and post-attention norm (into h).
  void Attention(MicroBatch* mb, int64_t layer, float scale);
  // The MLP of `layer` after Attention: a dense MLP finishes it (x += mlp); a MoE layer runs the
  // gate and dispatches the round, which FinishMoe completes.
  absl::Status StartMlp(MicroBatch* mb, uint64_t step, int64_t layer, uint32_t micro_batch);
  absl::Status FinishMoe(MicroBatch* mb);
  void DenseMlp(MicroBatch* mb, const model::MlpWeights& w);

  const model::ModelConfig config_;
  const model::DenseWeights* weights_;
  KvCache* kv_cache_;
  MoeDispatcher* dispatcher_;
  int micro_batches_;
  kernels::cpu::RopeTable rope_;

  MicroBatch micro_[2];
  int last_micro_batches_ = 1;
  std::vector<bf16> last_, logits_bf16_;
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_ATTENTION_BLOCK_H_
