// The router's metrics, exactly the router section of deploy/metrics/catalog.txt (names, labels,
// buckets). No cost gauge: the router knows only its own price, so cluster cost is computed by the
// recording rules from each process's own moe_worker_price_per_hour_dollars (deploy/METRICS.md
// "Cost per inference").
//
// Thread-safe.
#ifndef MOE_SERVICES_ROUTER_ROUTER_METRICS_H_
#define MOE_SERVICES_ROUTER_ROUTER_METRICS_H_

#include <string_view>

#include "grpcpp/support/status.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace moe::router {

// "OK", "CANCELLED", ... (the canonical gRPC code names).
std::string_view GrpcCodeName(grpc::StatusCode code);

class RouterMetrics {
 public:
  explicit RouterMetrics(prometheus::Registry& registry);

  // One finished Generate call. finish_reason: stop, length, stop_sequence, cancelled, deadline,
  // error.
  void RequestFinished(std::string_view finish_reason, grpc::StatusCode code);
  // reason: queue_full, kv_capacity, prompt_too_long, invalid_argument, no_workers, unauthenticated. Also
  // counts the request as finished with finish_reason "error" and `code`.
  void Rejected(std::string_view reason, grpc::StatusCode code);
  // Registers moe_router_api_key_requests_total (only a router with --api_keys_file exports it).
  // Call once, before any ApiKeyUsed, before serving.
  void EnableApiKeyMetrics();
  // A call authenticated with the API key named `key_name`. Requires EnableApiKeyMetrics.
  void ApiKeyUsed(std::string_view key_name);
  // A request moved to another attention worker after its worker failed.
  void Migrated() { migrations_.Increment(); }
  void TokensGenerated(int64_t n) { generation_tokens_.Increment(static_cast<double>(n)); }
  void PromptTokens(int64_t n) { prompt_tokens_.Increment(static_cast<double>(n)); }
  // role: attention_worker, expert_worker.
  void SetWorkers(std::string_view role, int ready, int expected);

  prometheus::Gauge& running() { return running_; }
  prometheus::Gauge& waiting() { return waiting_; }
  prometheus::Histogram& queue_time() { return queue_time_; }
  prometheus::Histogram& time_to_first_token() { return ttft_; }
  prometheus::Histogram& inter_token_latency() { return itl_; }
  prometheus::Histogram& time_per_output_token() { return tpot_; }
  prometheus::Histogram& request_duration() { return duration_; }

 private:
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Counter>& rejections_;
  prometheus::Gauge& running_;
  prometheus::Gauge& waiting_;
  prometheus::Counter& migrations_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generation_tokens_;
  prometheus::Histogram& queue_time_;
  prometheus::Histogram& ttft_;
  prometheus::Histogram& itl_;
  prometheus::Histogram& tpot_;
  prometheus::Histogram& duration_;
  prometheus::Registry& registry_;
  prometheus::Family<prometheus::Counter>* api_key_requests_ = nullptr;  // EnableApiKeyMetrics
  prometheus::Family<prometheus::Gauge>& workers_ready_;
  prometheus::Family<prometheus::Gauge>& workers_expected_;
};

}  // namespace moe::router

#endif  // MOE_SERVICES_ROUTER_ROUTER_METRICS_H_
