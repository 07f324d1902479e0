// One attention worker: the dense weights and KV cache (engine::Engine in attention-worker mode),
// its data plane (peer id = rank), the connections to the expert workers and the step loop. On the
// UCX data plane that is a UcxTransport and an ExpertConnector; on the NCCL data plane an
// NcclTransport and an NcclConnector (one communicator with every expert worker, formed over
// ExpertControl/JoinNccl after each one's GetInfo is checked: docs/data-plane.md#nccl-rendezvous).
// The gRPC surface is attention_service.h.
//
// Thread safety: Create/Start/Stop from one control thread; the parts are thread-safe as documented.
#ifndef MOE_SERVICES_ATTENTION_WORKER_ATTENTION_WORKER_H_
#define MOE_SERVICES_ATTENTION_WORKER_ATTENTION_WORKER_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/engine/engine.h"
#include "common/engine/expert_liveness.h"
#include "common/metrics/counter_mirror.h"
#include "common/transport/nccl/nccl_api.h"
#include "common/transport/nccl/nccl_transport.h"
#include "common/transport/ucx/ucx_transport.h"
#include "moe/v1/expert_control.pb.h"
#include "prometheus/registry.h"
#include "services/attention_worker/attention_metrics.h"
#include "services/attention_worker/expert_connector.h"
#include "services/attention_worker/nccl_connector.h"
#include "services/attention_worker/step_loop.h"

namespace moe::services {

struct AttentionWorkerOptions {
  std::string model_dir;
  int rank = 0;
  std::vector<std::string> expert_addresses;  // rank order
  int expert_replicas = 1;                    // copies of each expert shard (ExpertPlacement)
  // Expert workers that may join later (ranks N, N+1, ... after the N above): they host no home
  // shard, only the extra copies a placement version gives them (docs/operations.md#scaling).
  std::vector<std::string> joinable_expert_addresses;
  engine::EngineOptions engine;
  // The data plane (--transport): DATA_PLANE_UCX or DATA_PLANE_NCCL.
  v1::DataPlane data_plane = v1::DATA_PLANE_UCX;
  transport::UcxOptions ucx;
  ExpertConnectorOptions connector;  // addresses, rank, fingerprint, num_experts are filled in
  // DATA_PLANE_NCCL: the NCCL calls (not owned; must outlive the worker: the CUDA backend plugin's
  // CudaNcclApi in the binary, a FakeNcclApi in tests) and the rendezvous' timing (addresses, rank,
  // fingerprint, max_round_tokens, credentials and the GetInfo check are filled in).
  transport::NcclApi* nccl_api = nullptr;
  NcclConnectorOptions nccl;
};

class AttentionWorker {
 public:
  // Loads the dense weights and creates the transport; nothing runs yet. INVALID_ARGUMENT naming
  // the flag for bad options (rank outside [0, 1000), no expert workers for a MoE model, more
  // expert workers than experts; with NCCL: replicas, joinable expert workers, 2 micro-batches).
  // `registry` may be null.
  static absl::StatusOr<std::unique_ptr<AttentionWorker>> Create(const AttentionWorkerOptions& options,
                                                                 prometheus::Registry* registry);
  ~AttentionWorker() { Stop(); }

  // Starts the step loop and the connector. `on_ready_change(ready)` is called whenever every
  // expert worker becomes connected or one goes missing (from the connector or loop thread).
  void Start(std::function<void(bool)> on_ready_change);
  // Stops the connector, then the loop (open streams end with UNAVAILABLE). Idempotent.
  void Stop();

  StepLoop* loop() { return loop_.get(); }
  bool ready() const {
    return connector_ != nullptr ? connector_->ready()
                                 : nccl_connector_ != nullptr && nccl_connector_->ready();
  }
  // The NCCL data plane's connector (null on UCX or before Start).
  NcclConnector* nccl_connector() { return nccl_connector_.get(); }

 private:
  AttentionWorker() = default;
  transport::ActivationTransport* transport() const {
    return transport_ != nullptr ? static_cast<transport::ActivationTransport*>(transport_.get())
                                 : nccl_transport_.get();
  }

  AttentionWorkerOptions options_;
  // The data plane: one of the two. Outlives the engine and the connectors (declared first).
  std::unique_ptr<transport::UcxTransport> transport_;
  std::unique_ptr<transport::NcclTransport> nccl_transport_;
  std::unique_ptr<engine::ExpertLiveness> liveness_;  // outlives the engine and the connector
  // moe_attention_data_plane_dropped_messages_total; after transport_, so destroyed before it.
  std::unique_ptr<metrics::CounterMirror> drop_metrics_;
  std::unique_ptr<AttentionMetrics> metrics_;
  std::unique_ptr<engine::Engine> engine_;         // moved into loop_ by Start
  std::unique_ptr<ExpertConnector> connector_;     // UCX
  std::unique_ptr<NcclConnector> nccl_connector_;  // NCCL
  std::unique_ptr<StepLoop> loop_;
  std::function<void(bool)> on_ready_change_;
};

}  // namespace moe::services

#endif  // MOE_SERVICES_ATTENTION_WORKER_ATTENTION_WORKER_H_
