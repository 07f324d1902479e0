#include "services/router/router_metrics.h"

#include <string>

namespace moe::router {
namespace {

using prometheus::Histogram;

Histogram& MakeHistogram(prometheus::Registry& r, const std::string& name, const std::string& help,
                         Histogram::BucketBoundaries buckets) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add({}, std::move(buckets));
}

prometheus::Gauge& MakeGauge(prometheus::Registry& r, const std::string& name, const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
}

const Histogram::BucketBoundaries kTokenBuckets = {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                                   0.25,  0.5,    1,     2.5,  5,    10,   30,   60};

}  // namespace

std::string_view GrpcCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
  }
}

RouterMetrics::RouterMetrics(prometheus::Registry& r)
    : requests_(prometheus::BuildCounter()
                    .Name("moe_router_requests_total")
                    .Help("Finished Generate requests by finish reason and final gRPC status code.")
                    .Register(r)),
      rejections_(prometheus::BuildCounter()
                      .Name("moe_router_rejections_total")
                      .Help("Requests refused at admission, by reason.")
                      .Register(r)),
      running_(MakeGauge(r, "moe_router_requests_running",
                         "Requests placed on an attention worker and not yet finished.")),
      waiting_(MakeGauge(r, "moe_router_requests_waiting",
                         "Requests admitted and waiting in the router queue for placement.")),
      migrations_(prometheus::BuildCounter()
                      .Name("moe_router_migrations_total")
                      .Help("Requests moved to another attention worker after theirs failed mid-stream "
                            "(each move counts).")
                      .Register(r)
                      .Add({})),
      prompt_tokens_(prometheus::BuildCounter()
                         .Name("moe_router_prompt_tokens_total")
                         .Help("Prompt tokens of admitted requests (after chat template).")
                         .Register(r)
                         .Add({})),
      generation_tokens_(prometheus::BuildCounter()
                             .Name("moe_router_generation_tokens_total")
                             .Help("Tokens generated and streamed to clients.")
                             .Register(r)
                             .Add({})),
      queue_time_(MakeHistogram(
          r, "moe_router_queue_time_seconds", "Time from admission to placement on an attention worker.",
          {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600})),
      ttft_(
          MakeHistogram(r, "moe_router_time_to_first_token_seconds",
                        "Time from request arrival to the first generated token sent to the client.",
                        {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600})),
      itl_(MakeHistogram(r, "moe_router_inter_token_latency_seconds",
                         "Time between two consecutive generated tokens of one request.", kTokenBuckets)),
      tpot_(MakeHistogram(r, "moe_router_time_per_output_token_seconds",
                          "Per request: (end-to-end time - time to first token) / (generated tokens "
                          "- 1), observed once per request with at least 2 tokens.",
                          kTokenBuckets)),
      duration_(
          MakeHistogram(r, "moe_router_request_duration_seconds",
                        "End-to-end time of a Generate request, arrival to final message.",
                        {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800})),
      registry_(r),
      workers_ready_(prometheus::BuildGauge()
                         .Name("moe_router_workers_ready")
                         .Help("Workers of each role whose readiness check passes, as seen by the router.")
                         .Register(r)),
      workers_expected_(prometheus::BuildGauge()
                            .Name("moe_router_workers_expected")
                            .Help("Workers of each role the router is configured with (or discovered).")
                            .Register(r)) {
  // Every label value is known up front: export the zero series so rate() works from the start.
  for (const char* reason : {"queue_full", "kv_capacity", "prompt_too_long", "invalid_argument", "no_workers",
                             "unauthenticated"}) {
    rejections_.Add({{"reason", reason}});
  }
  for (const char* role : {"attention_worker", "expert_worker"}) {
    workers_ready_.Add({{"role", role}});
    workers_expected_.Add({{"role", role}});
  }
}

void RouterMetrics::RequestFinished(std::string_view finish_reason, grpc::StatusCode code) {
  requests_.Add({{"finish_reason", std::string(finish_reason)}, {"code", std::string(GrpcCodeName(code))}})
      .Increment();
}

void RouterMetrics::Rejected(std::string_view reason, grpc::StatusCode code) {
  rejections_.Add({{"reason", std::string(reason)}}).Increment();
  RequestFinished("error", code);
}

void RouterMetrics::EnableApiKeyMetrics() {
  api_key_requests_ =
      &prometheus::BuildCounter()
           .Name("moe_router_api_key_requests_total")
           .Help("Calls authenticated with each API key, by the key's name in --api_keys_file.")
           .Register(registry_);
}

void RouterMetrics::ApiKeyUsed(std::string_view key_name) {
  api_key_requests_->Add({{"key", std::string(key_name)}}).Increment();
}

void RouterMetrics::SetWorkers(std::string_view role, int ready, int expected) {
  workers_ready_.Add({{"role", std::string(role)}}).Set(ready);
  workers_expected_.Add({{"role", std::string(role)}}).Set(expected);
}

}  // namespace moe::router
