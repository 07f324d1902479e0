// One expert worker: loads its shard of the experts (only those tensors: memory proportional to
// the shard), opens its UCX endpoint (peer id 1000 + rank, engine/expert_placement.h) and serves
// dispatches through an engine::ExpertShardServer observed by ExpertMetrics. The gRPC surface is
// expert_control_service.h.
//
// Thread safety: info() is immutable after Create; ConnectAttention may be called from any thread
// (UcxTransport is thread-safe); Drain/Stop from one control thread.
#ifndef MOE_SERVICES_EXPERT_WORKER_EXPERT_WORKER_H_
#define MOE_SERVICES_EXPERT_WORKER_EXPERT_WORKER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/engine/expert_block.h"
#include "common/engine/expert_placement.h"
#include "common/engine/expert_shard_server.h"
#include "common/model/checkpoint.h"
#include "common/transport/ucx/ucx_transport.h"
#include "moe/v1/expert_control.pb.h"
#include "prometheus/registry.h"
#include "services/expert_worker/expert_metrics.h"

namespace moe::services {

// Peer ids of the data plane (engine/expert_placement.h): attention rank a = a, expert rank e =
// kFirstExpertPeerId + e.
using engine::kFirstExpertPeerId;

struct ExpertWorkerOptions {
  std::string model_dir;
  int rank = 0;
  int num_expert_workers = 1;
  absl::Duration load_window = absl::Seconds(60);
  bool per_expert_metrics = false;
  transport::UcxOptions ucx;
};

class ExpertWorker {
 public:
  // Validates the options (INVALID_ARGUMENT naming the flag), loads the shard, creates the
  // transport and starts serving rounds. `registry` may be null (no metrics).
  static absl::StatusOr<std::unique_ptr<ExpertWorker>> Create(const ExpertWorkerOptions& options,
                                                              prometheus::Registry* registry);
  ~ExpertWorker() { Stop(); }

  const v1::ExpertWorkerInfo& info() const { return info_; }

  // Connects the data plane back to attention worker `peer_id` (0 <= peer_id < 1000) at `address`.
  // Replaces a previous endpoint (a restarted attention worker). INVALID_ARGUMENT for a bad peer id
  // or address; FAILED_PRECONDITION when `fingerprint` (if non-empty) is not this model's.
  absl::Status ConnectAttention(int32_t peer_id, const std::string& address, const std::string& fingerprint);

  // See engine::ExpertShardServer::Drain / Stop.
  uint64_t Drain() { return server_->Drain(); }
  void Stop() {
    if (server_ != nullptr) server_->Stop();
  }
  uint64_t rounds_served() const { return server_->rounds_served(); }

 private:
  ExpertWorker() = default;

  v1::ExpertWorkerInfo info_;
  // Declared before block_: the shard's weights may be views into the checkpoint's mmap.
  std::unique_ptr<model::Checkpoint> checkpoint_;
  std::unique_ptr<engine::ExpertBlock> block_;
  std::unique_ptr<transport::UcxTransport> transport_;
  std::unique_ptr<ExpertMetrics> metrics_;
  std::unique_ptr<engine::ExpertShardServer> server_;
};

}  // namespace moe::services

#endif  // MOE_SERVICES_EXPERT_WORKER_EXPERT_WORKER_H_
