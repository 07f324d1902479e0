// The attention worker's metrics (deploy/metrics/catalog.txt, "attention worker" section).
// Thread safety: prometheus-cpp metric objects are thread-safe.
#ifndef MOE_SERVICES_ATTENTION_WORKER_ATTENTION_METRICS_H_
#define MOE_SERVICES_ATTENTION_WORKER_ATTENTION_METRICS_H_

#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace moe::services {

struct AttentionMetrics {
  explicit AttentionMetrics(prometheus::Registry& registry);

  prometheus::Gauge* kv_usage_ratio;
  prometheus::Gauge* kv_free_blocks;
  prometheus::Gauge* kv_blocks;
  prometheus::Gauge* sequences_running;
  prometheus::Counter* steps;
  prometheus::Counter* preemptions;
  prometheus::Counter* expert_failovers;
  // The expert load balancer (docs/architecture.md#expert-load-balancer).
  prometheus::Counter* expert_placement_switches;
  prometheus::Gauge* expert_extra_experts;
  prometheus::Gauge* expert_load_ratio;
  prometheus::Histogram* step_prefill_seconds;
  prometheus::Histogram* step_decode_seconds;
  prometheus::Histogram* step_dispatch_seconds;
  prometheus::Histogram* step_combine_seconds;
  prometheus::Histogram* step_transport_seconds;    // dispatch + combine's wait not in the experts
  prometheus::Histogram* step_expert_wait_seconds;  // combine's wait in the expert workers
  prometheus::Histogram* batch_tokens;
  prometheus::Histogram* batch_sequences;
};

}  // namespace moe::services

#endif  // MOE_SERVICES_ATTENTION_WORKER_ATTENTION_METRICS_H_
