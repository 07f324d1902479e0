// moe-router: the public moe.v1.Generation API of the cluster. Tokenizes, validates, queues and
// places requests on attention workers and streams their text back. Flags and env:
// deploy/k8s/README.md.
#include <csignal>
#include <iostream>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/time/time.h"
#include "common/metrics/metrics.h"
#include "common/rpc/flags.h"
#include "common/rpc/server.h"
#include "services/router/generate_service.h"
#include "services/router/request_validation.h"
#include "services/router/router_metrics.h"
#include "services/router/scheduler.h"
#include "services/router/served_model.h"

ABSL_FLAG(std::string, model, "", "Hugging Face model directory (only tokenizer and config are read)");
ABSL_FLAG(std::string, model_name, "", "served model name; empty: the model directory's base name");
ABSL_FLAG(std::string, attention_workers, "", "attention workers H:P,... in rank order");
ABSL_FLAG(std::string, expert_workers, "", "expert workers H:P,... (health and cost metrics only)");
ABSL_FLAG(std::string, listen, "0.0.0.0:50051", "gRPC listen address HOST:PORT (port 0: any)");
ABSL_FLAG(int, metrics_port, 9090, "Prometheus /metrics port on 0.0.0.0 (0: any)");
ABSL_FLAG(int, max_queued_requests, 256, "admission bound; beyond it RESOURCE_EXHAUSTED");
ABSL_FLAG(double, load_poll_ms, 100, "interval of the attention workers' GetLoad polls");
ABSL_FLAG(double, cost_window_seconds, 60, "window of the cost gauges");
ABSL_FLAG(double, worker_price_per_hour, 0, "dollars per hour of this process");
ABSL_FLAG(double, drain_seconds, 20, "on SIGTERM, how long open streams may finish");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");

namespace {

int Fail(const std::string& message) {
  std::cerr << "moe-router: " << message << std::endl;
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  moe::rpc::ParseFlagsWithEnv(
      argc, argv,
      "moe-router --model DIR --attention_workers H:P,... --listen H:P --metrics_port M "
      "--max_queued_requests N",
      {{"model", "MOE_MODEL"},
       {"attention_workers", "MOE_ATTENTION_WORKERS"},
       {"expert_workers", "MOE_EXPERT_WORKERS"},
       {"listen", "MOE_LISTEN"},
       {"metrics_port", "MOE_METRICS_PORT"},
       {"max_queued_requests", "MOE_MAX_QUEUED_REQUESTS"},
       {"cost_window_seconds", "MOE_COST_WINDOW_SECONDS"},
       {"worker_price_per_hour", "MOE_WORKER_PRICE_PER_HOUR"},
       {"log_level", "MOE_LOG_LEVEL"}});
  moe::rpc::BlockTerminationSignals();

  if (absl::GetFlag(FLAGS_model).empty()) return Fail("--model is required");
  auto attention = moe::rpc::ParseAddressList("attention_workers", absl::GetFlag(FLAGS_attention_workers));
  if (!attention.ok()) return Fail(std::string(attention.status().message()));
  if (attention->empty()) return Fail("--attention_workers: at least one HOST:PORT is required");
  std::vector<std::string> experts;
  if (!absl::GetFlag(FLAGS_expert_workers).empty()) {
    auto parsed = moe::rpc::ParseAddressList("expert_workers", absl::GetFlag(FLAGS_expert_workers));
    if (!parsed.ok()) return Fail(std::string(parsed.status().message()));
    experts = *parsed;
  }
  if (absl::GetFlag(FLAGS_max_queued_requests) < 1) return Fail("--max_queued_requests must be >= 1");
  if (!(absl::GetFlag(FLAGS_load_poll_ms) > 0)) return Fail("--load_poll_ms must be > 0");
  if (!(absl::GetFlag(FLAGS_cost_window_seconds) > 0)) return Fail("--cost_window_seconds must be > 0");
  if (!(absl::GetFlag(FLAGS_worker_price_per_hour) >= 0)) return Fail("--worker_price_per_hour must be >= 0");

  prometheus::Gauge& ready_gauge =
      moe::metrics::RegisterProcessMetrics("router", absl::GetFlag(FLAGS_worker_price_per_hour));
  moe::router::RouterMetrics metrics(moe::metrics::Registry(), absl::GetFlag(FLAGS_worker_price_per_hour),
                                     absl::Seconds(absl::GetFlag(FLAGS_cost_window_seconds)));
  auto metrics_port = moe::metrics::StartExposer(absl::GetFlag(FLAGS_metrics_port));
  if (!metrics_port.ok()) return Fail(metrics_port.status().ToString());

  auto model = moe::router::ServedModel::Load(absl::GetFlag(FLAGS_model), absl::GetFlag(FLAGS_model_name));
  if (!model.ok()) return Fail(model.status().ToString());

  moe::router::SchedulerOptions options;
  options.max_queued_requests = static_cast<size_t>(absl::GetFlag(FLAGS_max_queued_requests));
  options.poll_interval = absl::Milliseconds(absl::GetFlag(FLAGS_load_poll_ms));
  const int num_experts = static_cast<int>(experts.size());
  moe::router::Scheduler scheduler(*attention, std::move(experts), options, &metrics);
  moe::router::GenerateService service(model->get(), &scheduler, &metrics, moe::router::RequestLimits{},
                                       num_experts);
  auto server = moe::rpc::GrpcServer::Start(absl::GetFlag(FLAGS_listen), {&service},
                                            moe::router::kMaxReceiveMessageBytes);
  if (!server.ok()) return Fail(server.status().ToString());
  moe::rpc::GrpcServer* grpc_server = server->get();
  grpc_server->SetStarted();
  scheduler.Start([grpc_server, &ready_gauge](bool ready) {
    grpc_server->SetReady(ready);
    ready_gauge.Set(ready ? 1 : 0);
    std::cerr << "moe-router: " << (ready ? "ready" : "not ready (no attention worker is ready)")
              << std::endl;
  });
  std::cerr << "moe-router: serving " << (*model)->name << " on port " << grpc_server->port()
            << ", metrics on port " << *metrics_port << ", " << attention->size() << " attention worker(s)"
            << std::endl;

  const int signal = moe::rpc::WaitForTerminationSignal();
  std::cerr << "moe-router: signal " << signal << ", draining" << std::endl;
  grpc_server->Shutdown(absl::Seconds(absl::GetFlag(FLAGS_drain_seconds)));
  scheduler.Stop();
  return 0;
}
