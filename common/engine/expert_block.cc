#include "common/engine/expert_block.h"

#include <atomic>

#include "absl/strings/str_cat.h"
#include "common/kernels/cpu/kernels.h"
#include "common/status/status_macros.h"
#include "common/transport/moe_message.h"

namespace moe::engine {

ExpertBlock::ExpertBlock(const model::ModelConfig& config,
                         std::unique_ptr<model::ExpertShardWeights> weights)
    : config_(config), weights_(std::move(weights)) {
  token_counts_.resize(static_cast<size_t>(config_.num_hidden_layers));
  for (auto& counts : token_counts_) {
    counts.reset(new std::atomic<uint64_t>[static_cast<size_t>(weights_->num_experts)]);
    for (int64_t e = 0; e < weights_->num_experts; ++e) counts[e].store(0);
  }
}

absl::Status ExpertBlock::Apply(int64_t layer, int64_t expert, const bf16* x, int64_t num_rows,
                                bf16* y) const {
  if (layer < 0 || layer >= config_.num_hidden_layers || !config_.IsMoeLayer(layer)) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is not a MoE layer"));
  }
  const int64_t local = expert - weights_->first_expert;
  if (local < 0 || local >= weights_->num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("expert ", expert, " is not hosted here ([",
                                                   weights_->first_expert, ", ",
                                                   weights_->first_expert + weights_->num_experts, "))"));
  }
  if (num_rows == 0) return absl::OkStatus();
  const model::MlpWeights& w = weights_->layers[static_cast<size_t>(layer)][static_cast<size_t>(local)];
  const int64_t inter = w.gate_proj.out_features;
  std::vector<bf16> gate(static_cast<size_t>(num_rows * inter));
  std::vector<bf16> up(static_cast<size_t>(num_rows * inter));
  kernels::cpu::Linear(x, num_rows, w.gate_proj, gate.data());
  kernels::cpu::Linear(x, num_rows, w.up_proj, up.data());
  kernels::cpu::SiluMul(gate.data(), up.data(), num_rows * inter, gate.data());
  kernels::cpu::Linear(gate.data(), num_rows, w.down_proj, y);
  token_counts_[static_cast<size_t>(layer)][local].fetch_add(static_cast<uint64_t>(num_rows),
                                                             std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::byte>> ExpertBlock::Serve(int64_t layer,
                                                          std::span<const std::byte> dispatch) const {
  ASSIGN_OR_RETURN(transport::MoeMessageView in, transport::DecodeMoeMessage(dispatch));
  if (in.hidden != config_.hidden_size) {
    return absl::InvalidArgumentError(absl::StrCat("dispatch hidden size ", in.hidden,
                                                   " != model hidden size ", config_.hidden_size));
  }
  std::vector<std::byte> out;
  bf16* rows_out = transport::EncodeMoeMessageHeader(in.hidden, in.groups, &out);
  int64_t offset = 0;
  for (const transport::ExpertGroup& g : in.groups) {
    RETURN_IF_ERROR(Apply(layer, g.expert, in.rows + offset * in.hidden, g.num_rows,
                          rows_out + offset * in.hidden));
    offset += g.num_rows;
  }
  return out;
}

int64_t ExpertBlock::ExpertWeightBytes(int64_t layer) const {
  const auto& experts = weights_->layers[static_cast<size_t>(layer)];
  if (experts.empty()) return 0;
  const model::MlpWeights& w = experts.front();
  return w.gate_proj.WeightBytes() + w.up_proj.WeightBytes() + w.down_proj.WeightBytes();
}

std::vector<std::vector<uint64_t>> ExpertBlock::TokenCounts() const {
  std::vector<std::vector<uint64_t>> result(token_counts_.size());
  for (size_t l = 0; l < token_counts_.size(); ++l) {
    result[l].resize(static_cast<size_t>(weights_->num_experts));
    for (int64_t e = 0; e < weights_->num_experts; ++e) result[l][e] = token_counts_[l][e].load();
  }
  return result;
}

}  // namespace moe::engine
