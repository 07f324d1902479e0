// moe-expert-worker: serves experts [e0, e1) of every MoE layer to the attention workers over UCX;
// control (identity, rendezvous, drain) over gRPC. Flags and env: deploy/k8s/README.md.
#include <csignal>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/time/time.h"
#include "common/metrics/metrics.h"
#include "common/rpc/flags.h"
#include "common/rpc/server.h"
#include "services/expert_worker/expert_service.h"
#include "services/expert_worker/expert_worker.h"

ABSL_FLAG(std::string, model, "", "Hugging Face model directory");
ABSL_FLAG(int, rank, 0, "this expert worker's rank (its expert shard)");
ABSL_FLAG(bool, rank_from_hostname, false, "rank = the trailing -<ordinal> of the host name");
ABSL_FLAG(int, num_expert_workers, 1, "shard count: rank r hosts a contiguous 1/N of the experts");
ABSL_FLAG(std::string, listen, "0.0.0.0:50051", "gRPC listen address HOST:PORT (port 0: any)");
ABSL_FLAG(int, metrics_port, 9090, "Prometheus /metrics port on 0.0.0.0 (0: any)");
ABSL_FLAG(std::string, transport, "ucx", "data plane: ucx");
ABSL_FLAG(std::string, ucx_tls, "", "UCX transports (e.g. tcp, sm); empty: UCX_TLS or UCX's default");
ABSL_FLAG(double, load_window_seconds, 60, "window of moe_expert_load_balance_ratio");
ABSL_FLAG(bool, per_expert_metrics, false, "export moe_expert_expert_tokens_total{layer,expert}");
ABSL_FLAG(double, worker_price_per_hour, 0, "dollars per hour of this process");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");

namespace {

int Fail(const std::string& message) {
  std::cerr << "moe-expert-worker: " << message << std::endl;
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  moe::rpc::ParseFlagsWithEnv(argc, argv,
                              "moe-expert-worker --model DIR --rank R --num_expert_workers N --listen H:P",
                              {{"model", "MOE_MODEL"},
                               {"rank", "MOE_RANK"},
                               {"num_expert_workers", "MOE_NUM_EXPERT_WORKERS"},
                               {"listen", "MOE_LISTEN"},
                               {"metrics_port", "MOE_METRICS_PORT"},
                               {"transport", "MOE_TRANSPORT"},
                               {"load_window_seconds", "MOE_LOAD_WINDOW_SECONDS"},
                               {"per_expert_metrics", "MOE_PER_EXPERT_METRICS"},
                               {"worker_price_per_hour", "MOE_WORKER_PRICE_PER_HOUR"},
                               {"log_level", "MOE_LOG_LEVEL"}});
  moe::rpc::BlockTerminationSignals();

  if (absl::GetFlag(FLAGS_model).empty()) return Fail("--model is required");
  if (absl::GetFlag(FLAGS_transport) != "ucx") {
    return Fail("--transport: only 'ucx' is available to expert worker processes, got '" +
                absl::GetFlag(FLAGS_transport) + "'");
  }
  moe::services::ExpertWorkerOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  auto rank = moe::rpc::ResolveRank(absl::GetFlag(FLAGS_rank), absl::GetFlag(FLAGS_rank_from_hostname));
  if (!rank.ok()) return Fail(std::string(rank.status().message()));
  options.rank = *rank;
  options.num_expert_workers = absl::GetFlag(FLAGS_num_expert_workers);
  options.load_window = absl::Seconds(absl::GetFlag(FLAGS_load_window_seconds));
  options.per_expert_metrics = absl::GetFlag(FLAGS_per_expert_metrics);
  options.ucx.tls = absl::GetFlag(FLAGS_ucx_tls);

  prometheus::Gauge& ready_gauge =
      moe::metrics::RegisterProcessMetrics("expert_worker", absl::GetFlag(FLAGS_worker_price_per_hour));
  auto metrics_port = moe::metrics::StartExposer(absl::GetFlag(FLAGS_metrics_port));
  if (!metrics_port.ok()) return Fail(metrics_port.status().ToString());

  moe::services::ExpertService service;
  auto server = moe::rpc::GrpcServer::Start(absl::GetFlag(FLAGS_listen), {&service});
  if (!server.ok()) return Fail(server.status().ToString());
  std::cerr << "moe-expert-worker: rank " << options.rank << "/" << options.num_expert_workers
            << " listening on port " << (*server)->port() << ", metrics on port " << *metrics_port
            << std::endl;

  auto worker = moe::services::ExpertWorker::Create(options, &moe::metrics::Registry());
  if (!worker.ok()) return Fail(worker.status().ToString());
  service.SetWorker(worker->get());
  (*server)->SetStarted();
  (*server)->SetReady(true);
  ready_gauge.Set(1);
  const auto& info = (*worker)->info();
  std::cerr << "moe-expert-worker: serving experts [" << info.first_expert() << ", "
            << info.first_expert() + info.num_experts() << ") as peer " << info.peer_id() << std::endl;

  const int signal = moe::rpc::WaitForTerminationSignal();
  std::cerr << "moe-expert-worker: signal " << signal << ", draining" << std::endl;
  (*server)->SetReady(false);
  ready_gauge.Set(0);
  const uint64_t rounds = (*worker)->Drain();
  (*server)->Shutdown(absl::Seconds(1));
  (*worker)->Stop();
  std::cerr << "moe-expert-worker: served " << rounds << " rounds, exiting" << std::endl;
  return 0;
}
