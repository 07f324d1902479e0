#include "common/engine/attention_block.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"

namespace moe::engine {
namespace cpu = ::moe::kernels::cpu;

namespace {

cpu::RopeParams RopeParamsOf(const model::ModelConfig& config) {
  cpu::RopeParams p;
  p.theta = config.rope_theta;
  p.type = config.rope_scaling.type;
  p.factor = config.rope_scaling.factor;
  p.original_max_position_embeddings = config.rope_scaling.original_max_position_embeddings;
  p.beta_fast = config.rope_scaling.beta_fast;
  p.beta_slow = config.rope_scaling.beta_slow;
  p.attention_factor = config.rope_scaling.attention_factor.value_or(0.0);
  p.truncate = config.rope_scaling.truncate;
  return p;
}

}  // namespace

AttentionBlock::AttentionBlock(const model::ModelConfig& config, const model::DenseWeights* weights,
                               KvCache* kv_cache, MoeDispatcher* dispatcher)
    : config_(config),
      weights_(weights),
      kv_cache_(kv_cache),
      dispatcher_(dispatcher),
      rope_(cpu::BuildRopeTable(RopeParamsOf(config), config.head_dim, config.max_position_embeddings)) {}

void AttentionBlock::DenseMlp(const model::MlpWeights& w, const bf16* h, int64_t num_tokens, bf16* out) {
  const int64_t inter = w.gate_proj.out_features;
  std::vector<bf16>& gate = scratch_.mlp_gate;
  std::vector<bf16>& up = scratch_.mlp_up;
  gate.resize(static_cast<size_t>(num_tokens * inter));
  up.resize(static_cast<size_t>(num_tokens * inter));
  cpu::Linear(h, num_tokens, w.gate_proj, gate.data());
  cpu::Linear(h, num_tokens, w.up_proj, up.data());
  cpu::SiluMul(gate.data(), up.data(), num_tokens * inter, gate.data());
  cpu::Linear(gate.data(), num_tokens, w.down_proj, out);
}

absl::Status AttentionBlock::MoeLayer(uint64_t step, int64_t layer, const bf16* h, int64_t num_tokens,
                                      bf16* out) {
  if (dispatcher_ == nullptr) {
    return absl::FailedPreconditionError("MoE layer without an expert dispatcher");
  }
  const model::AttentionLayerWeights& lw = weights_->layers[static_cast<size_t>(layer)];
  const int64_t num_experts = config_.num_experts;
  const int64_t k = config_.num_experts_per_tok;
  LinearWeight router{DType::kBF16, num_experts, config_.hidden_size, lw.router, nullptr};
  std::vector<bf16>& router_logits = scratch_.router_logits;
  router_logits.resize(static_cast<size_t>(num_tokens * num_experts));
  cpu::Linear(h, num_tokens, router, router_logits.data());
  std::vector<int32_t>& ids = scratch_.expert_ids;
  std::vector<float>& weights = scratch_.expert_weights;
  ids.resize(static_cast<size_t>(num_tokens * k));
  weights.resize(static_cast<size_t>(num_tokens * k));
  cpu::TopKSoftmax(router_logits.data(), num_tokens, num_experts, k, config_.norm_topk_prob, ids.data(),
                   weights.data());
  ASSIGN_OR_RETURN(DispatchHandle handle,
                   dispatcher_->Dispatch(step, static_cast<uint32_t>(layer), /*micro_batch=*/0, h, num_tokens,
                                         ids.data(), weights.data(), k));
  return dispatcher_->Combine(handle, out);
}

absl::Status AttentionBlock::Forward(uint64_t step, std::span<const BatchSegment> segments,
                                     std::vector<float>* logits) {
  const int64_t hidden = config_.hidden_size;
  const int64_t num_heads = config_.num_attention_heads;
  const int64_t num_kv_heads = config_.num_key_value_heads;
  const int64_t head_dim = config_.head_dim;
  const int64_t q_width = num_heads * head_dim;
  const int64_t kv_width = num_kv_heads * head_dim;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));

  int64_t num_tokens = 0;
  for (const BatchSegment& s : segments) {
    if (s.num_tokens <= 0) return absl::InvalidArgumentError("empty batch segment");
    if (s.start_pos + s.num_tokens > rope_.max_positions) {
      return absl::InvalidArgumentError(absl::StrCat("position ", s.start_pos + s.num_tokens - 1,
                                                     " is past the context length ", rope_.max_positions));
    }
    const int64_t blocks_needed =
        (s.start_pos + s.num_tokens + kv_cache_->block_size() - 1) / kv_cache_->block_size();
    if (s.block_table == nullptr || static_cast<int64_t>(s.block_table->size()) < blocks_needed) {
      return absl::InternalError("block table does not cover the segment");
    }
    for (int64_t i = 0; i < s.num_tokens; ++i) {
      if (s.token_ids[i] < 0 || s.token_ids[i] >= config_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "token id ", s.token_ids[i], " is outside the vocabulary [0, ", config_.vocab_size, ")"));
      }
    }
    num_tokens += s.num_tokens;
  }
  if (num_tokens == 0) return absl::OkStatus();

  std::vector<int32_t>& ids = scratch_.ids;
  std::vector<int64_t>& positions = scratch_.positions;
  ids.clear();
  positions.clear();
  for (const BatchSegment& s : segments) {
    for (int64_t i = 0; i < s.num_tokens; ++i) {
      ids.push_back(s.token_ids[i]);
      positions.push_back(s.start_pos + i);
    }
  }

  const size_t n = static_cast<size_t>(num_tokens);
  std::vector<bf16>&x = scratch_.x, &h = scratch_.h, &branch = scratch_.branch, &q = scratch_.q,
  &k = scratch_.k, &v = scratch_.v, &attn = scratch_.attn;
  x.resize(n * hidden);
  h.resize(n * hidden);
  branch.resize(n * hidden);
  q.resize(n * q_width);
  k.resize(n * kv_width);
  v.resize(n * kv_width);
  attn.resize(n * q_width);
  cpu::Embed(weights_->embed_tokens, hidden, ids.data(), num_tokens, x.data());

  for (int64_t layer = 0; layer < config_.num_hidden_layers; ++layer) {
    const model::AttentionLayerWeights& lw = weights_->layers[static_cast<size_t>(layer)];
    // Attention.
    cpu::RmsNorm(x.data(), hidden, num_tokens, hidden, lw.input_layernorm, eps, h.data(), hidden);
    cpu::Linear(h.data(), num_tokens, lw.q_proj, q.data());
    cpu::Linear(h.data(), num_tokens, lw.k_proj, k.data());
    cpu::Linear(h.data(), num_tokens, lw.v_proj, v.data());
    cpu::RmsNorm(q.data(), head_dim, num_tokens * num_heads, head_dim, lw.q_norm, eps, q.data(), head_dim);
    cpu::RmsNorm(k.data(), head_dim, num_tokens * num_kv_heads, head_dim, lw.k_norm, eps, k.data(), head_dim);
    cpu::ApplyRope(q.data(), q_width, num_tokens, num_heads, positions.data(), rope_);
    cpu::ApplyRope(k.data(), kv_width, num_tokens, num_kv_heads, positions.data(), rope_);
    const cpu::PagedKv kv = kv_cache_->Layer(layer);
    int64_t offset = 0;
    for (const BatchSegment& s : segments) {
      cpu::WriteKv(k.data() + offset * kv_width, kv_width, v.data() + offset * kv_width, kv_width,
                   s.num_tokens, s.start_pos, s.block_table->data(), kv);
      cpu::PagedAttention(q.data() + offset * q_width, q_width, s.num_tokens, s.start_pos, num_heads, scale,
                          s.block_table->data(), kv, attn.data() + offset * q_width, q_width);
      offset += s.num_tokens;
    }
    cpu::Linear(attn.data(), num_tokens, lw.o_proj, branch.data());
    cpu::Add(x.data(), branch.data(), num_tokens * hidden, x.data());

    // MLP: sparse experts or dense.
    cpu::RmsNorm(x.data(), hidden, num_tokens, hidden, lw.post_attention_layernorm, eps, h.data(), hidden);
    if (config_.IsMoeLayer(layer)) {
      RETURN_IF_ERROR(MoeLayer(step, layer, h.data(), num_tokens, branch.data()));
    } else {
      DenseMlp(lw.dense_mlp, h.data(), num_tokens, branch.data());
    }
    cpu::Add(x.data(), branch.data(), num_tokens * hidden, x.data());
  }

  // Final norm and lm_head for the rows that need logits.
  std::vector<bf16>& last = scratch_.last;
  last.clear();
  int64_t offset = 0, num_logit_rows = 0;
  for (const BatchSegment& s : segments) {
    offset += s.num_tokens;
    if (!s.want_logits) continue;
    last.insert(last.end(), x.begin() + (offset - 1) * hidden, x.begin() + offset * hidden);
    ++num_logit_rows;
  }
  logits->clear();
  if (num_logit_rows == 0) return absl::OkStatus();
  cpu::RmsNorm(last.data(), hidden, num_logit_rows, hidden, weights_->final_norm, eps, last.data(), hidden);
  const int64_t vocab = weights_->lm_head.out_features;
  std::vector<bf16>& out = scratch_.logits_bf16;
  out.resize(static_cast<size_t>(num_logit_rows * vocab));
  cpu::Linear(last.data(), num_logit_rows, weights_->lm_head, out.data());
  logits->resize(out.size());
  for (size_t i = 0; i < out.size(); ++i) (*logits)[i] = BF16ToFloat(out[i]);
  return absl::OkStatus();
}

}  // namespace moe::engine
