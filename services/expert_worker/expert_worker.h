// One expert worker: loads its shard of the experts (only those tensors: memory proportional to
// the shard) and serves dispatches as peer 1000 + rank (engine/expert_placement.h), each round
// observed by ExpertMetrics. On the UCX data plane it opens a UCX endpoint and serves through an
// engine::ExpertShardServer; on the NCCL data plane it serves through NcclExpertLinks (one
// communicator per attention worker, formed by ExpertControl/JoinNccl), whose handler is the same
// engine::ExpertRoundHandler. The gRPC surface is expert_control_service.h.
//
// Thread safety: info() and LoadExtraExperts may be called from any thread; ConnectAttention may be called
// from any thread (UcxTransport is thread-safe); Drain/Stop from one control thread.
#ifndef MOE_SERVICES_EXPERT_WORKER_EXPERT_WORKER_H_
#define MOE_SERVICES_EXPERT_WORKER_EXPERT_WORKER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/engine/compute/expert_compute.h"
#include "common/engine/expert_placement.h"
#include "common/engine/expert_round_handler.h"
#include "common/engine/expert_shard_server.h"
#include "common/kernels/device_spec.h"
#include "common/metrics/counter_mirror.h"
#include "common/model/checkpoint.h"
#include "common/model/config.h"
#include "common/transport/nccl/nccl_api.h"
#include "common/transport/ucx/ucx_transport.h"
#include "moe/v1/expert_control.pb.h"
#include "prometheus/registry.h"
#include "services/expert_worker/expert_metrics.h"
#include "services/expert_worker/nccl_links.h"

namespace moe::services {

// Peer ids of the data plane (engine/expert_placement.h): attention rank a = a, expert rank e =
// kFirstExpertPeerId + e.
using engine::kFirstExpertPeerId;

struct ExpertWorkerOptions {
  std::string model_dir;
  int rank = 0;
  int num_expert_workers = 1;
  int expert_replicas = 1;  // copies of each shard; must divide num_expert_workers
  // A worker joining a running cluster (docs/operations.md#scaling): its rank is in
  // [num_expert_workers, 1000), it holds shard rank mod S, which the attention workers use as extra
  // copies, and it takes rows only once their placement names it.
  bool joinable = false;
  absl::Duration load_window = absl::Seconds(60);
  bool per_expert_metrics = false;
  // The largest max_round_tokens an attention worker may announce in Connect (it bounds the size
  // of the dispatches this worker accepts from it: docs/data-plane.md#admission-and-bounds).
  int64_t max_round_tokens = 65536;
  // Bytes of extra experts (the balancer's copies, LoadExtraExperts) this worker may hold; 0: none.
  int64_t extra_expert_budget_bytes = 0;
  // The data plane (--transport): DATA_PLANE_UCX (a UcxTransport and ExpertShardServer) or
  // DATA_PLANE_NCCL (NcclExpertLinks; GetInfo reports it and Connect is refused).
  v1::DataPlane data_plane = v1::DATA_PLANE_UCX;
  transport::UcxOptions ucx;
  // The NCCL calls for DATA_PLANE_NCCL (not owned; must outlive the worker): the CUDA backend
  // plugin's CudaNcclApi in the binary (engine::CreateNcclApi), a FakeNcclApi in tests.
  transport::NcclApi* nccl_api = nullptr;
  // How long a link waits for every rank of a bootstrap to join, and for its answer to be taken.
  absl::Duration nccl_join_timeout = absl::Seconds(30);
  absl::Duration nccl_send_timeout = absl::Seconds(10);
  // Where the shard's experts compute (`--device`): cpu, or cuda:N (weights uploaded once at start).
  kernels::DeviceSpec device;
};

class ExpertWorker {
 public:
  // Validates the options (INVALID_ARGUMENT naming the flag), loads the shard, creates the
  // transport and starts serving rounds. `registry` may be null (no metrics).
  static absl::StatusOr<std::unique_ptr<ExpertWorker>> Create(const ExpertWorkerOptions& options,
                                                              prometheus::Registry* registry);
  ~ExpertWorker() { Stop(); }

  // Identity and shard (immutable after Create) plus the current extra experts.
  v1::ExpertWorkerInfo info() const;

  // The expert load balancer's step one (docs/architecture.md#expert-load-balancer): loads `experts`
  // (all MoE layers) as the extra experts, replacing the previous set once all have loaded, for
  // placement `version`. INVALID_ARGUMENT naming experts[i] for an id out of range, a duplicate or
  // a home-shard expert; RESOURCE_EXHAUSTED naming --extra_expert_budget_bytes when they do not fit;
  // FAILED_PRECONDITION naming placement_version when it is older than the current one; ABORTED
  // naming replaces_version when `replaces` is given and is not the current version (another writer
  // loaded a set since the caller read it). On an error the previous set stays. Thread-safe (calls
  // are serialised).
  absl::Status LoadExtraExperts(uint64_t version, const std::vector<int32_t>& experts,
                                std::optional<uint64_t> replaces = std::nullopt);

  // The rendezvous with attention worker `peer_id` (0 <= peer_id < 1000), from its Connect RPC:
  // connects the data plane back to it at `address`, carrying `secret` (the one it admitted us
  // with), and admits its dispatches of up to `max_round_tokens` tokens per round. Returns the
  // secret its dispatches must carry. Replaces a previous endpoint and admission (a restarted
  // attention worker). INVALID_ARGUMENT naming the field for a bad peer id, address, secret or
  // max_round_tokens (<= 0 or above ExpertWorkerOptions::max_round_tokens); FAILED_PRECONDITION when
  // `fingerprint` (if non-empty) is not this model's.
  absl::StatusOr<std::string> ConnectAttention(int32_t peer_id, const std::string& address,
                                               const std::string& fingerprint, const std::string& secret,
                                               int64_t max_round_tokens);
  // Messages the data plane dropped, by reason (transport::DropReason).
  transport::DropCounts data_plane_drops() const {
    return transport_ != nullptr ? transport_->drop_counts() : nccl_links_->drop_counts();
  }
  // The NCCL data plane's links, for ExpertControl/JoinNccl (null on UCX).
  NcclExpertLinks* nccl_links() const { return nccl_links_.get(); }

  // Draining before exit (SIGTERM): GetInfo says so (ExpertWorkerInfo.draining), the worker goes on
  // serving, and the attention workers move its rounds to other copies of its shard.
  void BeginDraining() { draining_ = true; }
  bool draining() const { return draining_.load(); }
  // Blocks until no round has been served for `quiet` (the attention workers have stopped sending)
  // or `limit` has passed; returns whether it went quiet.
  bool WaitQuiet(absl::Duration quiet, absl::Duration limit) const;

  // See engine::ExpertShardServer::Drain / Stop. On NCCL, Drain stops the links (a round in
  // progress is cut off: its attention worker fails that step UNAVAILABLE and rebuilds without us).
  uint64_t Drain();
  void Stop();
  uint64_t rounds_served() const;

 private:
  ExpertWorker() = default;
  // Bytes of one expert's weights over all MoE layers (what an extra expert costs).
  int64_t ExpertBytes() const;

  v1::ExpertWorkerInfo info_;  // identity and shard; the extras are below
  model::ModelConfig config_;
  int64_t extra_budget_bytes_ = 0;
  mutable absl::Mutex extras_mu_;
  uint64_t placement_version_ ABSL_GUARDED_BY(extras_mu_) = 0;
  std::vector<int32_t> extra_experts_ ABSL_GUARDED_BY(extras_mu_);
  std::atomic<bool> draining_{false};
  int64_t hidden_ = 0;
  int64_t top_k_ = 0;
  int64_t max_round_tokens_ = 0;
  // Declared before block_: the shard's weights may be views into the checkpoint's mmap.
  std::unique_ptr<model::Checkpoint> checkpoint_;
  std::unique_ptr<engine::ExpertCompute> block_;  // the CPU ExpertBlock or the CUDA block
  std::unique_ptr<transport::UcxTransport> transport_;
  std::unique_ptr<ExpertMetrics> metrics_;
  std::unique_ptr<engine::ExpertShardServer> server_;  // UCX
  // NCCL: the rounds' work (compute, stamp, metrics), then the links that serve them.
  std::unique_ptr<engine::ExpertRoundHandler> round_handler_;
  std::unique_ptr<NcclExpertLinks> nccl_links_;
  // moe_expert_data_plane_dropped_messages_total; after transport_ and nccl_links_, so destroyed
  // before them.
  std::unique_ptr<metrics::CounterMirror> drop_metrics_;
};

}  // namespace moe::services

#endif  // MOE_SERVICES_EXPERT_WORKER_EXPERT_WORKER_H_
