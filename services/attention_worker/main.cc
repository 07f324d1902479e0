// moe-attention-worker: dense weights, KV cache and continuous batching for the requests the router
// places here; the experts are reached over UCX at the expert workers. Flags and env:
// deploy/k8s/README.md.
#include <csignal>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/time/time.h"
#include "common/metrics/metrics.h"
#include "common/rpc/flags.h"
#include "common/rpc/server.h"
#include "services/attention_worker/attention_service.h"
#include "services/attention_worker/attention_worker.h"

ABSL_FLAG(std::string, model, "", "Hugging Face model directory");
ABSL_FLAG(int, rank, 0, "this attention worker's rank (its data-plane peer id)");
ABSL_FLAG(bool, rank_from_hostname, false, "rank = the trailing -<ordinal> of the host name");
ABSL_FLAG(int, num_attention_workers, 1, "size of the attention group (rank must be below it)");
ABSL_FLAG(std::string, expert_workers, "", "expert workers HOST:PORT,... in rank order");
ABSL_FLAG(std::string, listen, "0.0.0.0:50051", "gRPC listen address HOST:PORT (port 0: any)");
ABSL_FLAG(int, metrics_port, 9090, "Prometheus /metrics port on 0.0.0.0 (0: any)");
ABSL_FLAG(std::string, transport, "ucx", "data plane: ucx");
ABSL_FLAG(std::string, ucx_tls, "", "UCX transports (e.g. tcp, sm); empty: UCX_TLS or UCX's default");
ABSL_FLAG(double, moe_timeout_seconds, 10, "deadline of one layer's dispatch+combine round");
ABSL_FLAG(int64_t, kv_cache_bytes, int64_t{1} << 30, "KV cache size in bytes");
ABSL_FLAG(int64_t, num_kv_blocks, 0, "KV cache blocks (overrides --kv_cache_bytes if > 0)");
ABSL_FLAG(int64_t, kv_block_size, 16, "tokens per KV block");
ABSL_FLAG(int64_t, max_num_seqs, 256, "sequences per step");
ABSL_FLAG(int64_t, max_step_tokens, 512, "token budget per step (chunked prefill)");
ABSL_FLAG(double, worker_price_per_hour, 0, "dollars per hour of this process");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");

namespace {

int Fail(const std::string& message) {
  std::cerr << "moe-attention-worker: " << message << std::endl;
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  moe::rpc::ParseFlagsWithEnv(
      argc, argv, "moe-attention-worker --model DIR --rank R --expert_workers H:P,... --listen H:P",
      {{"model", "MOE_MODEL"},
       {"rank", "MOE_RANK"},
       {"num_attention_workers", "MOE_NUM_ATTENTION_WORKERS"},
       {"expert_workers", "MOE_EXPERT_WORKERS"},
       {"listen", "MOE_LISTEN"},
       {"metrics_port", "MOE_METRICS_PORT"},
       {"transport", "MOE_TRANSPORT"},
       {"worker_price_per_hour", "MOE_WORKER_PRICE_PER_HOUR"},
       {"log_level", "MOE_LOG_LEVEL"}});
  moe::rpc::BlockTerminationSignals();

  if (absl::GetFlag(FLAGS_model).empty()) return Fail("--model is required");
  if (absl::GetFlag(FLAGS_transport) != "ucx") {
    return Fail("--transport: only 'ucx' is available between processes, got '" +
                absl::GetFlag(FLAGS_transport) + "'");
  }
  moe::services::AttentionWorkerOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  auto rank = moe::rpc::ResolveRank(absl::GetFlag(FLAGS_rank), absl::GetFlag(FLAGS_rank_from_hostname));
  if (!rank.ok()) return Fail(std::string(rank.status().message()));
  options.rank = *rank;
  if (options.rank >= absl::GetFlag(FLAGS_num_attention_workers)) {
    return Fail("--rank " + std::to_string(options.rank) + " is not below --num_attention_workers " +
                std::to_string(absl::GetFlag(FLAGS_num_attention_workers)));
  }
  auto experts = moe::rpc::ParseAddressList("expert_workers", absl::GetFlag(FLAGS_expert_workers));
  if (!experts.ok()) return Fail(std::string(experts.status().message()));
  options.expert_addresses = *experts;
  const double moe_timeout = absl::GetFlag(FLAGS_moe_timeout_seconds);
  if (!(moe_timeout > 0)) return Fail("--moe_timeout_seconds must be > 0");
  options.engine.moe_timeout = absl::Seconds(moe_timeout);
  options.engine.kv_cache_bytes = absl::GetFlag(FLAGS_kv_cache_bytes);
  options.engine.num_kv_blocks = absl::GetFlag(FLAGS_num_kv_blocks);
  options.engine.kv_block_size = absl::GetFlag(FLAGS_kv_block_size);
  options.engine.max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs);
  options.engine.max_step_tokens = absl::GetFlag(FLAGS_max_step_tokens);
  options.ucx.tls = absl::GetFlag(FLAGS_ucx_tls);
  // A send to a dead expert worker must not outlast the round's own deadline.
  options.ucx.send_timeout = options.engine.moe_timeout;

  prometheus::Gauge& ready_gauge =
      moe::metrics::RegisterProcessMetrics("attention_worker", absl::GetFlag(FLAGS_worker_price_per_hour));
  auto metrics_port = moe::metrics::StartExposer(absl::GetFlag(FLAGS_metrics_port));
  if (!metrics_port.ok()) return Fail(metrics_port.status().ToString());

  moe::services::AttentionService service;
  auto server = moe::rpc::GrpcServer::Start(absl::GetFlag(FLAGS_listen), {&service});
  if (!server.ok()) return Fail(server.status().ToString());
  std::cerr << "moe-attention-worker: rank " << options.rank << " listening on port " << (*server)->port()
            << ", metrics on port " << *metrics_port << std::endl;

  auto worker = moe::services::AttentionWorker::Create(options, &moe::metrics::Registry());
  if (!worker.ok()) return Fail(worker.status().ToString());
  moe::rpc::GrpcServer* grpc_server = server->get();
  (*worker)->Start([grpc_server, &ready_gauge](bool ready) {
    std::cerr << "moe-attention-worker: "
              << (ready ? "every expert worker connected: SERVING"
                        : "an expert worker is missing: NOT_SERVING")
              << std::endl;
    grpc_server->SetReady(ready);
    ready_gauge.Set(ready ? 1 : 0);
  });
  service.SetLoop((*worker)->loop());
  grpc_server->SetStarted();

  const int signal = moe::rpc::WaitForTerminationSignal();
  std::cerr << "moe-attention-worker: signal " << signal << ", stopping" << std::endl;
  grpc_server->SetReady(false);
  ready_gauge.Set(0);
  // Streams still open end with UNAVAILABLE (the router retries elsewhere), then the server stops.
  (*worker)->Stop();
  grpc_server->Shutdown(absl::Seconds(2));
  return 0;
}
