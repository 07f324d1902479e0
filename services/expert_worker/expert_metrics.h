// The expert worker's metrics (deploy/metrics/catalog.txt, "expert worker" section), registered in
// the process registry. Series for layers and experts are created up front, so /metrics lists every
// layer from the start and the round loop never takes the family's lock.
//
// Thread safety: prometheus-cpp metric objects are thread-safe.
#ifndef MOE_SERVICES_EXPERT_WORKER_EXPERT_METRICS_H_
#define MOE_SERVICES_EXPERT_WORKER_EXPERT_METRICS_H_

#include <cstdint>
#include <vector>

#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace moe::services {

struct ExpertMetrics {
  // `moe_layers`: the MoE layer indices; hosted experts [first_expert, first_expert + num_hosted).
  // Per-expert counters only if `per_expert`.
  ExpertMetrics(prometheus::Registry& registry, const std::vector<int64_t>& moe_layers, int64_t num_layers,
                int64_t first_expert, int64_t num_hosted, bool per_expert);

  prometheus::Gauge* hosted_experts;
  prometheus::Counter* rounds;
  prometheus::Histogram* compute_seconds;
  prometheus::Counter* bytes_received;
  prometheus::Counter* bytes_sent;
  std::vector<prometheus::Counter*> layer_tokens;                // [layer]; nullptr for dense layers
  std::vector<prometheus::Gauge*> load_balance;                  // [layer]; nullptr for dense layers
  std::vector<std::vector<prometheus::Counter*>> expert_tokens;  // [layer][local]; empty w/o flag
};

}  // namespace moe::services

#endif  // MOE_SERVICES_EXPERT_WORKER_EXPERT_METRICS_H_
