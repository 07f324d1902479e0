#include "services/expert_worker/expert_metrics.h"

#include <limits>
#include <string>

#include "common/metrics/metrics.h"

namespace moe::services {

ExpertMetrics::ExpertMetrics(prometheus::Registry& registry, const std::vector<int64_t>& moe_layers,
                             int64_t num_layers, int64_t first_expert, int64_t num_hosted, bool per_expert,
                             absl::Duration load_window)
    : window_(num_layers, num_hosted, load_window) {
  metrics::AddUnlabeledGauge(registry, "moe_expert_hosted_experts",
                             "Experts per MoE layer hosted by this worker (its shard plus replicas).")
      .Set(static_cast<double>(num_hosted));
  rounds_ = &metrics::AddUnlabeledCounter(
      registry, "moe_expert_rounds_total",
      "Dispatch/combine rounds (one layer of one micro-batch from one sender) served.");
  compute_seconds_ = &metrics::AddUnlabeledHistogram(
      registry, "moe_expert_compute_duration_seconds",
      "Expert compute time of one round (grouped SwiGLU over the received rows).",
      metrics::Buckets({0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                        0.5, 1, 2.5, 5, 10, 30, 60}));
  bytes_received_ = &metrics::AddUnlabeledCounter(registry, "moe_expert_bytes_received_total",
                                                  "Activation bytes received on the data plane (dispatch).");
  bytes_sent_ = &metrics::AddUnlabeledCounter(registry, "moe_expert_bytes_sent_total",
                                              "Activation bytes sent on the data plane (combine).");
  auto& tokens_family = prometheus::BuildCounter()
                            .Name("moe_expert_tokens_total")
                            .Help("Token rows (token x routed expert pairs) computed, by MoE layer.")
                            .Register(registry);
  auto& balance_family =
      prometheus::BuildGauge()
          .Name("moe_expert_load_balance_ratio")
          .Help(
              "Per layer, mean / max tokens per hosted expert over the last --load_window_seconds "
              "(1 = perfectly even); NaN when the layer saw no tokens.")
          .Register(registry);
  layer_tokens_.assign(static_cast<size_t>(num_layers), nullptr);
  load_balance_.assign(static_cast<size_t>(num_layers), nullptr);
  for (int64_t layer : moe_layers) {
    const std::string label = std::to_string(layer);
    layer_tokens_[static_cast<size_t>(layer)] = &tokens_family.Add({{"layer", label}});
    load_balance_[static_cast<size_t>(layer)] = &balance_family.Add({{"layer", label}});
    load_balance_[static_cast<size_t>(layer)]->Set(std::numeric_limits<double>::quiet_NaN());
  }
  if (per_expert) {
    auto& expert_family = prometheus::BuildCounter()
                              .Name("moe_expert_expert_tokens_total")
                              .Help("Token rows computed per hosted expert and layer.")
                              .Register(registry);
    expert_tokens_.resize(static_cast<size_t>(num_layers));
    for (int64_t layer : moe_layers) {
      for (int64_t e = 0; e < num_hosted; ++e) {
        expert_tokens_[static_cast<size_t>(layer)].push_back(&expert_family.Add(
            {{"layer", std::to_string(layer)}, {"expert", std::to_string(first_expert + e)}}));
      }
    }
  }
}

void ExpertMetrics::OnRoundServed(const engine::ServedRound& round) {
  rounds_->Increment();
  compute_seconds_->Observe(absl::ToDoubleSeconds(round.compute));
  bytes_received_->Increment(static_cast<double>(round.bytes_received));
  bytes_sent_->Increment(static_cast<double>(round.bytes_sent));
  const int64_t layer = round.layer;
  if (layer < 0 || layer >= static_cast<int64_t>(layer_tokens_.size()) ||
      layer_tokens_[static_cast<size_t>(layer)] == nullptr) {
    return;
  }
  const std::vector<prometheus::Counter*>* per_expert = static_cast<size_t>(layer) < expert_tokens_.size()
                                                            ? &expert_tokens_[static_cast<size_t>(layer)]
                                                            : nullptr;
  uint64_t rows = 0;
  for (size_t local = 0; local < round.rows_per_expert.size(); ++local) {
    const uint64_t n = round.rows_per_expert[local];
    if (n == 0) continue;
    rows += n;
    window_.Record(round.start, layer, static_cast<int64_t>(local), n);
    if (per_expert != nullptr && local < per_expert->size()) {
      (*per_expert)[local]->Increment(static_cast<double>(n));
    }
  }
  layer_tokens_[static_cast<size_t>(layer)]->Increment(static_cast<double>(rows));
  RefreshBalance(layer);
}

void ExpertMetrics::OnRoundFailed(const engine::FailedRound& round) {
  rounds_->Increment();
  compute_seconds_->Observe(absl::ToDoubleSeconds(round.compute));
  bytes_received_->Increment(static_cast<double>(round.bytes_received));
}

void ExpertMetrics::OnIdle(absl::Time now) {
  if (!window_.Advance(now)) return;
  for (int64_t layer = 0; layer < window_.num_layers(); ++layer) RefreshBalance(layer);
}

void ExpertMetrics::RefreshBalance(int64_t layer) {
  if (layer < 0 || layer >= static_cast<int64_t>(load_balance_.size())) return;
  if (prometheus::Gauge* gauge = load_balance_[static_cast<size_t>(layer)]) {
    gauge->Set(window_.BalanceRatio(layer));
  }
}

}  // namespace moe::services
