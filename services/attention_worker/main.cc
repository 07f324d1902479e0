// moe-attention-worker: dense weights, KV cache and continuous batching for the requests the router
// places here; the experts are reached over UCX or NCCL (--transport) at the expert workers. Flags and env:
// --help, deploy/k8s/README.md.
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/metrics/metrics.h"
#include "common/model/load_progress.h"
#include "common/rpc/flags.h"
#include "common/rpc/service_main.h"
#include "common/rpc/worker_main/data_plane_flags.h"
#include "services/attention_worker/attention_service.h"
#include "services/attention_worker/attention_worker.h"

ABSL_FLAG(std::string, model, "", "Hugging Face model directory");
ABSL_FLAG(int, rank, 0, "this attention worker's rank (its data-plane peer id)");
ABSL_FLAG(bool, rank_from_hostname, false, "rank = the trailing -<ordinal> of the host name");
ABSL_FLAG(int, num_attention_workers, 1, "size of the attention group (rank must be below it)");
ABSL_FLAG(std::string, expert_workers, "", "expert workers HOST:PORT,... in rank order");
ABSL_FLAG(std::string, joinable_expert_workers, "",
          "expert workers HOST:PORT,... that may join later (ranks after --expert_workers'): connected "
          "when they appear, used once SetExpertPlacement gives them extra copies");
ABSL_FLAG(int, expert_replicas, 1,
          "copies of each expert shard (as the expert workers' --expert_replicas); a round fails over "
          "to another copy when a worker dies");
ABSL_FLAG(std::string, transport, "ucx",
          "data plane to the expert workers: ucx (any --device); nccl (--device cuda, a build with NCCL, "
          "the expert workers on nccl too; docs/data-plane.md#nccl-rendezvous)");
ABSL_FLAG(std::string, device, "cpu",
          "where the forward pass runs: cpu, cuda (= cuda:0) or cuda:N (dense weights and KV cache on that "
          "GPU; docs/gpu.md)");
ABSL_FLAG(double, moe_timeout_seconds, 10, "deadline of one layer's dispatch+combine round");
ABSL_FLAG(double, kv_cache_gib, 8,
          "KV cache size in GiB (mapped lazily: memory is used as blocks are written; Qwen3-30B-A3B "
          "takes 96 KiB per token, so 8 GiB hold ~87k tokens)");
ABSL_FLAG(int64_t, num_kv_blocks, 0, "KV cache blocks (overrides --kv_cache_gib if > 0)");
ABSL_FLAG(int64_t, kv_block_size, 16, "tokens per KV block");
ABSL_FLAG(int64_t, max_num_seqs, 256, "sequences per step");
ABSL_FLAG(int64_t, max_step_tokens, 512, "token budget per step (chunked prefill)");
ABSL_FLAG(int, micro_batches, 1,
          "1 or 2: with 2, a step of several sequences runs as two micro-batches whose attention and "
          "expert rounds overlap (ping-pong); outputs are identical");

int main(int argc, char** argv) {
  auto service = moe::rpc::ServiceMain::Init(
      argc, argv,
      {.binary = "moe-attention-worker",
       .role = "attention_worker",
       .usage = "moe-attention-worker: dense layers, KV cache and batching of the requests the router places "
                "here.\n\n"
                "Usage: moe-attention-worker --model DIR --rank R --num_attention_workers N "
                "--expert_workers H:P,... [--listen H:P] [--metrics_port M] "
                "(--tls_ca F --tls_cert F --tls_key F | --insecure)"});

  if (absl::GetFlag(FLAGS_model).empty()) return service->Fail("--model is required");
  // --device, --transport, --ucx_tls and --ucx_poll_spin_us (MOE_*), checked as in the other worker
  // (common/rpc/worker_main/data_plane_flags.h); with --transport nccl, NCCL's calls from the CUDA
  // backend plugin. Declared before the worker, so that it outlives it.
  auto data_plane =
      moe::rpc::WorkerDataPlaneFromFlags(absl::GetFlag(FLAGS_device), absl::GetFlag(FLAGS_transport));
  if (!data_plane.ok()) return service->Fail(data_plane.status());
  moe::services::AttentionWorkerOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  auto rank = moe::rpc::ResolveRank(absl::GetFlag(FLAGS_rank), absl::GetFlag(FLAGS_rank_from_hostname));
  if (!rank.ok()) return service->Fail(rank.status().message());
  options.rank = *rank;
  if (options.rank >= absl::GetFlag(FLAGS_num_attention_workers)) {
    return service->Fail("--rank " + std::to_string(options.rank) + " is not below --num_attention_workers " +
                         std::to_string(absl::GetFlag(FLAGS_num_attention_workers)));
  }
  auto experts = moe::rpc::ParseAddressList("expert_workers", absl::GetFlag(FLAGS_expert_workers));
  if (!experts.ok()) return service->Fail(experts.status().message());
  options.expert_addresses = *experts;
  if (!absl::GetFlag(FLAGS_joinable_expert_workers).empty()) {
    auto joinable =
        moe::rpc::ParseAddressList("joinable_expert_workers", absl::GetFlag(FLAGS_joinable_expert_workers));
    if (!joinable.ok()) return service->Fail(joinable.status().message());
    options.joinable_expert_addresses = *joinable;
  }
  options.expert_replicas = absl::GetFlag(FLAGS_expert_replicas);
  const double moe_timeout = absl::GetFlag(FLAGS_moe_timeout_seconds);
  if (!(moe_timeout > 0)) return service->Fail("--moe_timeout_seconds must be > 0");
  options.engine.moe_timeout = absl::Seconds(moe_timeout);
  const double kv_cache_gib = absl::GetFlag(FLAGS_kv_cache_gib);
  if (!(kv_cache_gib > 0) || kv_cache_gib > 1 << 20) {
    return service->Fail("--kv_cache_gib must be in (0, 1048576]");
  }
  options.engine.kv_cache_bytes = static_cast<int64_t>(kv_cache_gib * (int64_t{1} << 30));
  options.engine.num_kv_blocks = absl::GetFlag(FLAGS_num_kv_blocks);
  options.engine.kv_block_size = absl::GetFlag(FLAGS_kv_block_size);
  options.engine.max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs);
  options.engine.max_step_tokens = absl::GetFlag(FLAGS_max_step_tokens);
  options.engine.micro_batches = absl::GetFlag(FLAGS_micro_batches);
  if (options.engine.micro_batches != 1 && options.engine.micro_batches != 2) {
    return service->Fail("--micro_batches must be 1 or 2, got " +
                         std::to_string(options.engine.micro_batches));
  }
  options.ucx = data_plane->ucx;
  options.data_plane = data_plane->nccl_api != nullptr ? moe::v1::DATA_PLANE_NCCL : moe::v1::DATA_PLANE_UCX;
  options.nccl_api = data_plane->nccl_api.get();
  options.engine.device = data_plane->device;
  options.connector.credentials = service->client_credentials();
  // A send to a dead expert worker must not outlast the round's own deadline.
  options.ucx.send_timeout = options.engine.moe_timeout;

  moe::services::AttentionService attention_service;
  if (absl::Status s = service->Serve({&attention_service}); !s.ok()) return service->Fail(s);
  LOG(INFO) << "rank " << options.rank << " of " << absl::GetFlag(FLAGS_num_attention_workers)
            << ", KV cache "
            << (options.engine.num_kv_blocks > 0 ? absl::StrCat(options.engine.num_kv_blocks, " blocks")
                                                 : absl::StrCat(kv_cache_gib, " GiB"))
            << ", loading the model";

  // The weight warm-up's progress (bytes, rate) in the log while readiness is still NOT_SERVING.
  moe::model::SetLoadProgressSink([](const moe::model::LoadProgress& progress) {
    if (progress.unit == moe::model::LoadProgress::Unit::kByte) {
      LOG(INFO) << moe::model::FormatLoadProgress(progress);
    }
  });
  auto worker = moe::services::AttentionWorker::Create(options, &moe::metrics::Registry());
  if (!worker.ok()) return service->Fail(worker.status());
  moe::rpc::ServiceMain* main_service = service.get();
  (*worker)->Start([main_service](bool ready) {
    if (ready) {
      LOG(INFO) << "every expert shard has a connected worker: SERVING";
    } else {
      LOG(WARNING) << "an expert shard has no connected worker: NOT_SERVING";
    }
    main_service->SetReady(ready);
  });
  attention_service.SetLoop((*worker)->loop());
  service->SetStarted();

  service->WaitForTerminationSignal();
  // Drain: NOT_SERVING first, so the router places nothing new here; then the streams still open
  // end with UNAVAILABLE, which hands each back to the router, and the router migrates it to another
  // attention worker as prompt + tokens streamed (docs/architecture.md, "Request migration").
  main_service->SetReady(false);
  LOG(INFO) << "terminating: NOT_SERVING; handing the open streams back to the router for migration";
  (*worker)->Stop();
  service->server()->Shutdown(absl::Seconds(2));
  return 0;
}
