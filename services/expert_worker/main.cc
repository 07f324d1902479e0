// moe-expert-worker: serves experts [e0, e1) of every MoE layer to the attention workers over UCX or
// NCCL (--transport); control (identity, rendezvous, drain) over gRPC. Flags and env: --help,
// deploy/k8s/README.md.
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/time/time.h"
#include "common/metrics/metrics.h"
#include "common/model/load_progress.h"
#include "common/rpc/flags.h"
#include "common/rpc/service_main.h"
#include "common/rpc/worker_main/data_plane_flags.h"
#include "services/expert_worker/expert_control_service.h"
#include "services/expert_worker/expert_worker.h"

ABSL_FLAG(std::string, model, "", "Hugging Face model directory");
ABSL_FLAG(int, rank, 0, "this expert worker's rank (its expert shard)");
ABSL_FLAG(bool, rank_from_hostname, false, "rank = the trailing -<ordinal> of the host name");
ABSL_FLAG(int, num_expert_workers, 1, "expert workers in the cluster (shards x replicas)");
ABSL_FLAG(bool, joinable, false,
          "join a running cluster: --rank >= --num_expert_workers, hosts shard rank mod N/R as extra "
          "copies the attention workers use once their placement names it; drains on SIGTERM");
ABSL_FLAG(int, expert_replicas, 1,
          "copies of each expert shard: N workers hold N/R shards, rank r hosts shard r mod N/R");
ABSL_FLAG(std::string, transport, "ucx",
          "data plane to the attention workers: ucx (any --device); nccl (--device cuda, a build with NCCL, "
          "the attention workers on nccl too; docs/data-plane.md#nccl-rendezvous)");
ABSL_FLAG(
    std::string, device, "cpu",
    "where the experts compute: cpu, cuda (= cuda:0) or cuda:N (weights uploaded to that GPU at start)");
ABSL_FLAG(double, load_window_seconds, 60, "window of moe_expert_load_balance_ratio");
ABSL_FLAG(bool, per_expert_metrics, false, "export moe_expert_expert_tokens_total{layer,expert}");
ABSL_FLAG(int64_t, max_round_tokens, 65536,
          "the largest --max_step_tokens an attention worker may announce (bounds dispatch sizes)");

ABSL_FLAG(int64_t, extra_expert_budget_bytes, 0,
          "bytes of extra experts the expert load balancer may load here (LoadExtraExperts); 0: none");

int main(int argc, char** argv) {
  auto service = moe::rpc::ServiceMain::Init(
      argc, argv,
      {.binary = "moe-expert-worker",
       .role = "expert_worker",
       .usage =
           "moe-expert-worker: serves one shard of every MoE layer's experts to the attention workers.\n\n"
           "Usage: moe-expert-worker --model DIR --rank R --num_expert_workers N [--listen H:P] "
           "[--metrics_port M] (--tls_ca F --tls_cert F --tls_key F | --insecure)"});

  if (absl::GetFlag(FLAGS_model).empty()) return service->Fail("--model is required");
  // --device, --transport, --ucx_tls and --ucx_poll_spin_us (MOE_*), checked as in the other worker
  // (common/rpc/worker_main/data_plane_flags.h); with --transport nccl, NCCL's calls from the CUDA
  // backend plugin. Declared before the worker, so that it outlives it.
  auto data_plane =
      moe::rpc::WorkerDataPlaneFromFlags(absl::GetFlag(FLAGS_device), absl::GetFlag(FLAGS_transport));
  if (!data_plane.ok()) return service->Fail(data_plane.status());
  moe::services::ExpertWorkerOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  auto rank = moe::rpc::ResolveRank(absl::GetFlag(FLAGS_rank), absl::GetFlag(FLAGS_rank_from_hostname));
  if (!rank.ok()) return service->Fail(rank.status().message());
  options.rank = *rank;
  options.num_expert_workers = absl::GetFlag(FLAGS_num_expert_workers);
  options.expert_replicas = absl::GetFlag(FLAGS_expert_replicas);
  options.joinable = absl::GetFlag(FLAGS_joinable);
  options.load_window = absl::Seconds(absl::GetFlag(FLAGS_load_window_seconds));
  options.per_expert_metrics = absl::GetFlag(FLAGS_per_expert_metrics);
  options.max_round_tokens = absl::GetFlag(FLAGS_max_round_tokens);
  options.extra_expert_budget_bytes = absl::GetFlag(FLAGS_extra_expert_budget_bytes);
  options.ucx = data_plane->ucx;
  options.data_plane = data_plane->nccl_api != nullptr ? moe::v1::DATA_PLANE_NCCL : moe::v1::DATA_PLANE_UCX;
  options.nccl_api = data_plane->nccl_api.get();
  options.device = data_plane->device;

  moe::rpc::ServiceMain* main_service = service.get();
  moe::services::ExpertControlService control([main_service] { main_service->SetReady(false); });
  if (absl::Status s = service->Serve({&control}); !s.ok()) return service->Fail(s);
  LOG(INFO) << "rank " << options.rank << " of " << options.num_expert_workers << ", loading the model";

  // The weight warm-up's progress (bytes, rate) in the log while readiness is still NOT_SERVING.
  moe::model::SetLoadProgressSink([](const moe::model::LoadProgress& progress) {
    if (progress.unit == moe::model::LoadProgress::Unit::kByte) {
      LOG(INFO) << moe::model::FormatLoadProgress(progress);
    }
  });
  auto worker = moe::services::ExpertWorker::Create(options, &moe::metrics::Registry());
  if (!worker.ok()) return service->Fail(worker.status());
  control.SetNcclLinks((*worker)->nccl_links());  // null on UCX: JoinNccl is refused
  control.SetWorker(worker->get());
  service->SetStarted();
  service->SetReady(!control.drained());  // a Drain may already have come
  const auto& info = (*worker)->info();
  LOG(INFO) << "serving experts [" << info.first_expert() << ", " << info.first_expert() + info.num_experts()
            << ") as peer " << info.peer_id() << " on " << options.device.ToString();

  service->WaitForTerminationSignal();
  if (options.expert_replicas > 1 || options.joinable) {
    // Hand over to the other copies first: NOT_SERVING, GetInfo says draining, the attention workers
    // stop sending here (their connectors look every 500 ms), and once no round has come for a
    // second (at most 10 s) this worker stops, with nothing in flight to fail over.
    service->SetReady(false);
    (*worker)->BeginDraining();
    LOG(INFO) << "terminating: draining, the other copies of "
              << (options.joinable ? "its experts" : "this shard") << " take its rounds";
    const bool quiet = (*worker)->WaitQuiet(absl::Seconds(1), absl::Seconds(10));
    LOG(INFO) << (quiet ? "no more rounds" : "rounds still coming after 10 s") << ", stopping";
  }
  const uint64_t rounds = (*worker)->Drain();
  service->server()->Shutdown(absl::Seconds(1));
  (*worker)->Stop();
  LOG(INFO) << "served " << rounds << " rounds, exiting";
  return 0;
}
