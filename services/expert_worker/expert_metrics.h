// The expert worker's metrics (deploy/metrics/catalog.txt, "expert worker" section), registered in
// the process registry and fed as the ExpertShardServer's round observer. Series for layers and
// experts are created up front, so /metrics lists every layer from the start and serving a round
// never takes a family's lock. The load-balance gauges come from a sliding ExpertLoadWindow.
//
// Thread safety: the observer methods are called by the shard server one at a time (they touch
// the window); prometheus-cpp metric objects are thread-safe for the scrape.
#ifndef MOE_SERVICES_EXPERT_WORKER_EXPERT_METRICS_H_
#define MOE_SERVICES_EXPERT_WORKER_EXPERT_METRICS_H_

#include <cstdint>
#include <vector>

#include "absl/time/time.h"
#include "common/engine/expert_round_observer.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "services/expert_worker/expert_load_window.h"

namespace moe::services {

class ExpertMetrics final : public engine::ExpertRoundObserver {
 public:
  // `moe_layers`: the MoE layer indices (< num_layers); hosted experts [first_expert, first_expert +
  // num_hosted). Per-expert counters only if `per_expert`. `load_window` > 0: the span of
  // moe_expert_load_balance_ratio.
  ExpertMetrics(prometheus::Registry& registry, const std::vector<int64_t>& moe_layers, int64_t num_layers,
                int64_t first_expert, int64_t num_hosted, bool per_expert, absl::Duration load_window);

  // A served round counts in rounds, compute time, bytes, tokens per layer (and per expert) and
  // the layer's load window. Rows of a layer that is out of range or dense are not counted.
  void OnRoundServed(const engine::ServedRound& round) override;
  // A failed round counts in rounds, compute time and bytes received only.
  void OnRoundFailed(const engine::FailedRound& round) override;
  // Ages the load window; the balance gauges follow.
  void OnIdle(absl::Time now) override;

 private:
  void RefreshBalance(int64_t layer);

  prometheus::Counter* rounds_;
  prometheus::Histogram* compute_seconds_;
  prometheus::Counter* bytes_received_;
  prometheus::Counter* bytes_sent_;
  std::vector<prometheus::Counter*> layer_tokens_;                // [layer]; nullptr for dense layers
  std::vector<prometheus::Gauge*> load_balance_;                  // [layer]; nullptr for dense layers
  std::vector<std::vector<prometheus::Counter*>> expert_tokens_;  // [layer][local]; empty w/o flag
  ExpertLoadWindow window_;
};

}  // namespace moe::services

#endif  // MOE_SERVICES_EXPERT_WORKER_EXPERT_METRICS_H_
