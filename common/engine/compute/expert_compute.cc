#include "common/engine/compute/expert_compute.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"

namespace moe::engine {

absl::Status ExpertCompute::SetExtraExperts(std::vector<std::unique_ptr<model::ExpertShardWeights>> extras) {
  if (extras.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      "extra experts (the expert load balancer) are served on the CPU only so far: this expert "
      "worker's --device does not take them");
}

absl::Status CheckMoeLayer(const model::ModelConfig& config, int64_t layer) {
  if (layer < 0 || layer >= config.num_hidden_layers || !config.IsMoeLayer(layer)) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is not a MoE layer"));
  }
  return absl::OkStatus();
}

absl::Status CheckExpertGroup(int64_t first_expert, int64_t num_experts, int64_t expert, int64_t num_rows) {
  const int64_t local = expert - first_expert;
  if (local < 0 || local >= num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("expert ", expert, " is not hosted here ([", first_expert,
                                                   ", ", first_expert + num_experts, "))"));
  }
  if (num_rows < 0) return absl::InvalidArgumentError(absl::StrCat("negative row count ", num_rows));
  return absl::OkStatus();
}

absl::StatusOr<DecodedDispatch> DecodeDispatch(const model::ModelConfig& config, int64_t first_expert,
                                               int64_t num_experts, int64_t layer,
                                               std::span<const std::byte> dispatch, bool check_experts,
                                               std::vector<std::byte> out_buffer) {
  DecodedDispatch decoded;
  decoded.out = std::move(out_buffer);
  ASSIGN_OR_RETURN(decoded.in, transport::DecodeMoeMessage(dispatch));
  if (decoded.in.hidden != config.hidden_size) {
    return absl::InvalidArgumentError(absl::StrCat("dispatch hidden size ", decoded.in.hidden,
                                                   " != model hidden size ", config.hidden_size));
  }
  RETURN_IF_ERROR(CheckMoeLayer(config, layer));
  for (const transport::ExpertGroup& g : decoded.in.groups) {
    if (check_experts) RETURN_IF_ERROR(CheckExpertGroup(first_expert, num_experts, g.expert, g.num_rows));
  }
  decoded.rows_out = transport::EncodeMoeMessageHeader(decoded.in.hidden, decoded.in.groups, &decoded.out);
  return decoded;
}

absl::Status ExpertCompute::ServeInto(int64_t layer, std::span<const std::byte> dispatch,
                                      std::vector<std::byte>* out) const {
  ASSIGN_OR_RETURN(*out, Serve(layer, dispatch));
  return absl::OkStatus();
}

int64_t ShardExpertWeightBytes(const model::ExpertShardWeights& weights, int64_t layer) {
  if (layer < 0 || layer >= static_cast<int64_t>(weights.layers.size())) return 0;
  const auto& experts = weights.layers[static_cast<size_t>(layer)];
  if (experts.empty()) return 0;
  const model::MlpWeights& w = experts.front();
  return w.gate_proj.WeightBytes() + w.up_proj.WeightBytes() + w.down_proj.WeightBytes();
}

ExpertTokenCounter::ExpertTokenCounter(int64_t num_layers, int64_t num_experts) : num_experts_(num_experts) {
  counts_.resize(static_cast<size_t>(num_layers));
  for (auto& counts : counts_) {
    counts.reset(new std::atomic<uint64_t>[static_cast<size_t>(num_experts)]);
    for (int64_t e = 0; e < num_experts; ++e) counts[e].store(0);
  }
}

void ExpertTokenCounter::Add(int64_t layer, int64_t local_expert, uint64_t rows) {
  counts_[static_cast<size_t>(layer)][local_expert].fetch_add(rows, std::memory_order_relaxed);
}

std::vector<std::vector<uint64_t>> ExpertTokenCounter::Snapshot() const {
  std::vector<std::vector<uint64_t>> result(counts_.size());
  for (size_t l = 0; l < counts_.size(); ++l) {
    result[l].resize(static_cast<size_t>(num_experts_));
    for (int64_t e = 0; e < num_experts_; ++e) result[l][e] = counts_[l][e].load();
  }
  return result;
}

}  // namespace moe::engine
