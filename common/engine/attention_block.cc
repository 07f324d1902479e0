#include "common/engine/attention_block.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"

namespace moe::engine {
namespace cpu = ::moe::kernels::cpu;

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

AttentionBlock::AttentionBlock(const model::ModelConfig& config, const model::DenseWeights* weights,
                               KvCache* kv_cache, MoeDispatcher* dispatcher, int micro_batches)
    : config_(config),
      weights_(weights),
      kv_cache_(kv_cache),
      dispatcher_(dispatcher),
      micro_batches_(micro_batches),
      rope_(cpu::BuildRopeTable(RopeParamsOf(config), config.head_dim, config.max_position_embeddings)) {}

void AttentionBlock::DenseMlp(MicroBatch* mb, const model::MlpWeights& w) {
  const int64_t n = mb->num_tokens;
  const int64_t inter = w.gate_proj.out_features;
  std::vector<bf16>& gate = mb->mlp_gate;
  std::vector<bf16>& up = mb->mlp_up;
  gate.resize(static_cast<size_t>(n * inter));
  up.resize(static_cast<size_t>(n * inter));
  cpu::Linear(mb->h.data(), n, w.gate_proj, gate.data());
  cpu::Linear(mb->h.data(), n, w.up_proj, up.data());
  cpu::SiluMul(gate.data(), up.data(), n * inter, gate.data());
  cpu::Linear(gate.data(), n, w.down_proj, mb->branch.data());
}

void AttentionBlock::Prepare(MicroBatch* mb) {
  const int64_t hidden = config_.hidden_size;
  const int64_t q_width = config_.num_attention_heads * config_.head_dim;
  const int64_t kv_width = config_.num_key_value_heads * config_.head_dim;
  mb->ids.clear();
  mb->positions.clear();
  for (const BatchSegment& s : mb->segments) {
    for (int64_t i = 0; i < s.num_tokens; ++i) {
      mb->ids.push_back(s.token_ids[i]);
      mb->positions.push_back(s.start_pos + i);
    }
  }
  const size_t n = static_cast<size_t>(mb->num_tokens);
  mb->x.resize(n * hidden);
  mb->h.resize(n * hidden);
  mb->branch.resize(n * hidden);
  mb->q.resize(n * q_width);
  mb->k.resize(n * kv_width);
  mb->v.resize(n * kv_width);
  mb->attn.resize(n * q_width);
  cpu::Embed(weights_->embed_tokens, hidden, mb->ids.data(), mb->num_tokens, mb->x.data());
}

void AttentionBlock::Attention(MicroBatch* mb, int64_t layer, float scale) {
  const int64_t hidden = config_.hidden_size;
  const int64_t num_heads = config_.num_attention_heads;
  const int64_t num_kv_heads = config_.num_key_value_heads;
  const int64_t head_dim = config_.head_dim;
  const int64_t q_width = num_heads * head_dim;
  const int64_t kv_width = num_kv_heads * head_dim;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const int64_t n = mb->num_tokens;
  bf16 *x = mb->x.data(), *h = mb->h.data(), *q = mb->q.data(), *k = mb->k.data(), *v = mb->v.data();
  const model::AttentionLayerWeights& lw = weights_->layers[static_cast<size_t>(layer)];
  cpu::RmsNorm(x, hidden, n, hidden, lw.input_layernorm, eps, h, hidden);
  cpu::Linear(h, n, lw.q_proj, q);
  cpu::Linear(h, n, lw.k_proj, k);
  cpu::Linear(h, n, lw.v_proj, v);
  cpu::RmsNorm(q, head_dim, n * num_heads, head_dim, lw.q_norm, eps, q, head_dim);
  cpu::RmsNorm(k, head_dim, n * num_kv_heads, head_dim, lw.k_norm, eps, k, head_dim);
  cpu::ApplyRope(q, q_width, n, num_heads, mb->positions.data(), rope_);
  cpu::ApplyRope(k, kv_width, n, num_kv_heads, mb->positions.data(), rope_);
  const cpu::PagedKv kv = kv_cache_->Layer(layer);
  int64_t offset = 0;
  for (const BatchSegment& s : mb->segments) {
    cpu::WriteKv(k + offset * kv_width, kv_width, v + offset * kv_width, kv_width, s.num_tokens, s.start_pos,
                 s.block_table->data(), kv);
    cpu::PagedAttention(q + offset * q_width, q_width, s.num_tokens, s.start_pos, num_heads, scale,
                        s.block_table->data(), kv, mb->attn.data() + offset * q_width, q_width);
    offset += s.num_tokens;
  }
  cpu::Linear(mb->attn.data(), n, lw.o_proj, mb->branch.data());
  cpu::Add(x, mb->branch.data(), n * hidden, x);
  cpu::RmsNorm(x, hidden, n, hidden, lw.post_attention_layernorm, eps, h, hidden);
}

absl::Status AttentionBlock::StartMlp(MicroBatch* mb, uint64_t step, int64_t layer, uint32_t micro_batch) {
  const model::AttentionLayerWeights& lw = weights_->layers[static_cast<size_t>(layer)];
  const int64_t n = mb->num_tokens;
  if (!config_.IsMoeLayer(layer)) {
    DenseMlp(mb, lw.dense_mlp);
    cpu::Add(mb->x.data(), mb->branch.data(), n * config_.hidden_size, mb->x.data());
    return absl::OkStatus();
  }
  if (dispatcher_ == nullptr) {
    return absl::FailedPreconditionError("MoE layer without an expert dispatcher");
  }
  const int64_t num_experts = config_.num_experts;
  const int64_t k = config_.num_experts_per_tok;
  LinearWeight router{DType::kBF16, num_experts, config_.hidden_size, lw.router, nullptr};
  mb->router_logits.resize(static_cast<size_t>(n * num_experts));
  cpu::Linear(mb->h.data(), n, router, mb->router_logits.data());
  mb->expert_ids.resize(static_cast<size_t>(n * k));
  mb->expert_weights.resize(static_cast<size_t>(n * k));
  cpu::TopKSoftmax(mb->router_logits.data(), n, num_experts, k, config_.norm_topk_prob, mb->expert_ids.data(),
                   mb->expert_weights.data());
  // mb->h stays untouched until FinishMoe (a re-send to another replica reads it again).
  ASSIGN_OR_RETURN(mb->pending,
                   dispatcher_->Dispatch(step, static_cast<uint32_t>(layer), micro_batch, mb->h.data(), n,
                                         mb->expert_ids.data(), mb->expert_weights.data(), k));
  return absl::OkStatus();
}

absl::Status AttentionBlock::FinishMoe(MicroBatch* mb) {
  RETURN_IF_ERROR(dispatcher_->Combine(mb->pending, mb->branch.data()));
  mb->pending = DispatchHandle();
  cpu::Add(mb->x.data(), mb->branch.data(), mb->num_tokens * config_.hidden_size, mb->x.data());
  return absl::OkStatus();
}

absl::Status AttentionBlock::Forward(uint64_t step, std::span<const BatchSegment> segments,
                                     std::vector<float>* logits) {
  const int64_t hidden = config_.hidden_size;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(config_.head_dim));

  int64_t num_tokens = 0;
  RETURN_IF_ERROR(
      ValidateSegments(config_, rope_.max_positions, kv_cache_->block_size(), segments, &num_tokens));
  if (num_tokens == 0) return absl::OkStatus();

  // Micro-batches: with two, the first takes whole segments until it holds about half the tokens
  // (at least one segment each). A step of one sequence runs as one.
  int num_micro = 1;
  micro_[0].segments = segments;
  micro_[0].num_tokens = num_tokens;
  if (micro_batches_ > 1 && segments.size() > 1 && dispatcher_ != nullptr) {
    size_t split = 1;
    int64_t first_tokens = segments[0].num_tokens;
    while (split + 1 < segments.size() && 2 * (first_tokens + segments[split].num_tokens) <= num_tokens) {
      first_tokens += segments[split].num_tokens;
      ++split;
    }
    micro_[0].segments = segments.subspan(0, split);
    micro_[0].num_tokens = first_tokens;
    micro_[1].segments = segments.subspan(split);
    micro_[1].num_tokens = num_tokens - first_tokens;
    num_micro = 2;
  }
  last_micro_batches_ = num_micro;
  for (int m = 0; m < num_micro; ++m) Prepare(&micro_[m]);

  // Ping-pong: each micro-batch finishes layer l-1's MoE round, then runs layer l's attention and
  // starts its MLP; so while one micro-batch's round is with the experts, the other's attention runs.
  const int64_t num_layers = config_.num_hidden_layers;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    for (int m = 0; m < num_micro; ++m) {
      MicroBatch& mb = micro_[m];
      if (layer > 0 && config_.IsMoeLayer(layer - 1)) RETURN_IF_ERROR(FinishMoe(&mb));
      Attention(&mb, layer, scale);
      RETURN_IF_ERROR(StartMlp(&mb, step, layer, static_cast<uint32_t>(m)));
    }
  }
  if (config_.IsMoeLayer(num_layers - 1)) {
    for (int m = 0; m < num_micro; ++m) RETURN_IF_ERROR(FinishMoe(&micro_[m]));
  }

  // Final norm and lm_head for the rows that need logits, in segment order (the micro-batches are
  // consecutive runs of segments).
  last_.clear();
  int64_t num_logit_rows = 0;
  for (int m = 0; m < num_micro; ++m) {
    const MicroBatch& mb = micro_[m];
    int64_t offset = 0;
    for (const BatchSegment& s : mb.segments) {
      offset += s.num_tokens;
      if (!s.want_logits) continue;
      last_.insert(last_.end(), mb.x.begin() + (offset - 1) * hidden, mb.x.begin() + offset * hidden);
      ++num_logit_rows;
    }
  }
  logits->clear();
  if (num_logit_rows == 0) return absl::OkStatus();
  cpu::RmsNorm(last_.data(), hidden, num_logit_rows, hidden, weights_->final_norm, eps, last_.data(), hidden);
  const int64_t vocab = weights_->lm_head.out_features;
  logits_bf16_.resize(static_cast<size_t>(num_logit_rows * vocab));
  cpu::Linear(last_.data(), num_logit_rows, weights_->lm_head, logits_bf16_.data());
  logits->resize(logits_bf16_.size());
  for (size_t i = 0; i < logits_bf16_.size(); ++i) (*logits)[i] = BF16ToFloat(logits_bf16_[i]);
  return absl::OkStatus();
}

}  // namespace moe::engine
