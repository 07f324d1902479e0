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
#include "common/engine/kv_cache.h"
#include "common/engine/moe_dispatch.h"
#include "common/kernels/cpu/kernels.h"
#include "common/model/config.h"
#include "common/model/weights.h"

namespace moe::engine {

// `num_tokens` tokens of one sequence at positions [start_pos, start_pos + num_tokens).
struct BatchSegment {
  const int32_t* token_ids = nullptr;
  int64_t num_tokens = 0;
  int64_t start_pos = 0;
  const std::vector<int32_t>* block_table = nullptr;  // must cover start_pos + num_tokens
  bool want_logits = false;                           // logits of the segment's last token
};

class AttentionBlock {
 public:
  // None of the pointers is owned. `dispatcher` may be null for dense models.
  AttentionBlock(const model::ModelConfig& config, const model::DenseWeights* weights, KvCache* kv_cache,
                 MoeDispatcher* dispatcher);

  // Runs the step. logits: [segments with want_logits, vocab] fp32 (the bf16 lm_head output
  // upcast), in segment order. Errors from the data plane (UNAVAILABLE) fail the whole step.
  absl::Status Forward(uint64_t step, std::span<const BatchSegment> segments, std::vector<float>* logits);

  int64_t max_positions() const { return rope_.max_positions; }

 private:
  absl::Status MoeLayer(uint64_t step, int64_t layer, const bf16* h, int64_t num_tokens, bf16* out);
  void DenseMlp(const model::MlpWeights& w, const bf16* h, int64_t num_tokens, bf16* out);

  const model::ModelConfig config_;
  const model::DenseWeights* weights_;
  KvCache* kv_cache_;
  MoeDispatcher* dispatcher_;
  kernels::cpu::RopeTable rope_;

  // Scratch reused across steps (grown, never shrunk): a fresh multi-100 KB allocation per step is
  // an mmap and a page fault per page, which showed up at ~10% of a decode step.
  struct Scratch {
    std::vector<int32_t> ids;
    std::vector<int64_t> positions;
    std::vector<bf16> x, h, branch, q, k, v, attn, last, logits_bf16, router_logits;
    std::vector<int32_t> expert_ids;
    std::vector<float> expert_weights;
    std::vector<bf16> mlp_gate, mlp_up;
  } scratch_;
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_ATTENTION_BLOCK_H_
