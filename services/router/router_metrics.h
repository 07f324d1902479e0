// The router's metrics, exactly the router section of deploy/metrics/catalog.txt (names, labels,
// buckets), including the cost gauges of deploy/METRICS.md "Cost per inference".
//
// Thread-safe.
#ifndef MOE_SERVICES_ROUTER_ROUTER_METRICS_H_
#define MOE_SERVICES_ROUTER_ROUTER_METRICS_H_

#include <deque>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
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
  RouterMetrics(prometheus::Registry& registry, double price_per_hour_dollars, absl::Duration cost_window);

  // One finished Generate call. finish_reason: stop, length, stop_sequence, cancelled, deadline,
  // error.
  void RequestFinished(std::string_view finish_reason, grpc::StatusCode code, absl::Time now);
  // reason: queue_full, kv_capacity, prompt_too_long, invalid_argument, no_workers. Also counts the
  // request as finished with finish_reason "error" and `code`.
  void Rejected(std::string_view reason, grpc::StatusCode code, absl::Time now);
  void TokensGenerated(int64_t n, absl::Time now);
  void PromptTokens(int64_t n) { prompt_tokens_.Increment(static_cast<double>(n)); }
  // role: attention_worker, expert_worker.
  void SetWorkers(std::string_view role, int ready, int expected);
  // Recomputes the cost gauges over the window ending at `now` with `ready_workers` (attention +
  // expert) besides the router itself.
  void UpdateCost(absl::Time now, int ready_workers);

  prometheus::Gauge& running() { return running_; }
  prometheus::Gauge& waiting() { return waiting_; }
  prometheus::Histogram& queue_time() { return queue_time_; }
  prometheus::Histogram& time_to_first_token() { return ttft_; }
  prometheus::Histogram& inter_token_latency() { return itl_; }
  prometheus::Histogram& time_per_output_token() { return tpot_; }
  prometheus::Histogram& request_duration() { return duration_; }
  double cost_per_1k_tokens() const { return cost_per_1k_.Value(); }
  double cost_per_request() const { return cost_per_request_.Value(); }

 private:
  struct WindowEvent {
    absl::Time time;
    int64_t tokens;
    int64_t requests;
  };
  void AddToWindow(absl::Time now, int64_t tokens, int64_t requests);

  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Counter>& rejections_;
  prometheus::Gauge& running_;
  prometheus::Gauge& waiting_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generation_tokens_;
  prometheus::Histogram& queue_time_;
  prometheus::Histogram& ttft_;
  prometheus::Histogram& itl_;
  prometheus::Histogram& tpot_;
  prometheus::Histogram& duration_;
  prometheus::Family<prometheus::Gauge>& workers_ready_;
  prometheus::Family<prometheus::Gauge>& workers_expected_;
  prometheus::Gauge& cost_per_1k_;
  prometheus::Gauge& cost_per_request_;

  const double price_per_hour_;
  const absl::Duration cost_window_;
  absl::Mutex mu_;
  std::deque<WindowEvent> window_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe::router

#endif  // MOE_SERVICES_ROUTER_ROUTER_METRICS_H_
