// The attention worker's view of the expert workers (ExpertControl clients, expert_control.proto): at
// start and whenever one is missing it calls GetInfo + Connect on it (retrying with a bounded backoff),
// validates its shard against the ExpertPlacement layout and the model fingerprint, and connects
// the local UcxTransport to its data-plane address. The rendezvous is also the data plane's
// admission (docs/data-plane.md#admission-and-bounds): the connector admits the expert worker's
// combine messages (a fresh secret, sent in ConnectRequest, and the size bound of its shard's
// answers) and connects with the secret the expert worker returns in ConnectResponse. While all are connected
// it re-checks them every `monitor_interval`, so a dead or restarted expert worker (new UCX address) is
// noticed without traffic; ReportFailure() (a step failed with UNAVAILABLE) re-checks at once.
//
// With replicas (--expert_replicas R) the connector is ready while every shard has at least one
// connected replica, keeps the dispatcher's ExpertLiveness in step with which workers are connected,
// and takes a failed worker out at once when a round gives up on it (the liveness's failure
// listener), reconnecting it with backoff until it is back
// (docs/architecture.md#expert-replicas-and-failover). A worker whose GetInfo says it is draining
// stops being live as soon as another copy of its shard is connected and not draining, so it can
// exit with no round in flight.
//
// Thread safety: all public methods are thread-safe. One background thread does the RPCs.
#ifndef MOE_SERVICES_ATTENTION_WORKER_EXPERT_CONNECTOR_H_
#define MOE_SERVICES_ATTENTION_WORKER_EXPERT_CONNECTOR_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/engine/expert_liveness.h"
#include "common/engine/expert_placement.h"
#include "common/rpc/tls.h"
#include "common/transport/ucx/ucx_transport.h"
#include "moe/v1/expert_control.grpc.pb.h"

namespace moe::services {

struct ExpertConnectorOptions {
  std::vector<std::string> expert_addresses;  // "host:port", index = expert rank
  // The first `num_home_workers` addresses host the home shards (-1: all); the rest are joinable
  // workers (ExpertPlacement::WithJoinableWorkers): connected when they appear, never needed for
  // readiness, used once a placement gives them extra copies.
  int num_home_workers = -1;
  int attention_rank = 0;
  std::string model_fingerprint;
  int64_t num_experts = 0;  // the model's experts per layer
  int expert_replicas = 1;  // copies of each shard (ExpertPlacement)
  // Kept in step with which workers are connected (not owned; may be null).
  engine::ExpertLiveness* liveness = nullptr;
  // For the data plane's size bounds (docs/data-plane.md#admission-and-bounds): the model's hidden
  // size and experts per token, and the most tokens one step carries (--max_step_tokens).
  int64_t hidden_size = 0;
  int64_t experts_per_token = 0;
  int64_t max_round_tokens = 0;
  absl::Duration rpc_timeout = absl::Seconds(2);
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(2);
  absl::Duration monitor_interval = absl::Milliseconds(500);
  // How the connector dials the expert workers (default: plaintext).
  rpc::ClientCredentials credentials;
};

// Checks one GetInfo answer against the layout the attention worker expects for expert rank
// `rank`: rank, worker count, expert range (ExpertPlacement::RangeOf), peer id 1000 + rank, data
// plane (`data_plane`: UCX for ExpertConnector, NCCL for NcclConnector) and the fingerprint.
// FAILED_PRECONDITION naming the mismatching field.
absl::Status ValidateExpertInfo(const v1::ExpertWorkerInfo& info, int rank, int num_workers,
                                int64_t num_experts, const std::string& fingerprint, int replicas = 1,
                                v1::DataPlane data_plane = v1::DATA_PLANE_UCX);

class ExpertConnector {
 public:
  // `transport` is not owned and must outlive Stop(). `on_ready_change(ready)` is called from the
  // connector thread whenever all-connected flips.
  ExpertConnector(ExpertConnectorOptions options, transport::UcxTransport* transport,
                  std::function<void(bool)> on_ready_change);
  ~ExpertConnector() { Stop(); }

  void Start();
  void Stop();

  // True while every shard has a connected and validated expert worker.
  bool ready() const;
  // A round gave up on expert worker `rank` (the liveness's failure listener): it is reconnected
  // before it is used again. Readiness holds while its shards have other connected replicas.
  void ReportPeerFailure(int rank, const absl::Status& why);
  // A step failed with a data-plane error: readiness drops at once and every expert worker is
  // checked (and reconnected) again.
  void ReportFailure();
  // Blocks until ready() or the deadline; returns ready().
  bool WaitReady(absl::Time deadline) const;
  // The expert load balancer's guard (docs/architecture.md#expert-load-balancer): asks every expert
  // worker `placement` gives extra experts to (a fresh GetInfo, from the calling thread) whether it
  // holds them. FAILED_PRECONDITION naming the worker and expert when one does not; UNAVAILABLE when
  // a worker does not answer.
  absl::Status CheckHoldsExtras(const engine::ExpertPlacement& placement) const;

 private:
  struct Peer {
    std::string address;
    std::unique_ptr<v1::ExpertControl::Stub> stub;
    bool connected = false;
    std::string data_address;  // UCX address the endpoint was made with
    std::string last_error;    // logged once per change
    bool draining = false;     // its last GetInfo said it is stopping
    bool handed_over = false;  // draining and taken out of the liveness (logged once)
  };
  void Loop();
  int num_home_workers() const {
    return options_.num_home_workers < 0 ? static_cast<int>(peers_.size()) : options_.num_home_workers;
  }
  // Checks peer `rank`; (re)connects it if needed. Returns whether it is connected afterwards.
  bool CheckPeer(int rank, bool force_reconnect);

  const ExpertConnectorOptions options_;
  transport::UcxTransport* transport_;
  std::function<void(bool)> on_ready_change_;
  std::vector<Peer> peers_;  // connector thread only
  std::thread thread_;

  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool ready_ ABSL_GUARDED_BY(mu_) = false;
  bool recheck_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<bool> peer_failed_ ABSL_GUARDED_BY(mu_);  // reported by ReportPeerFailure, not yet rechecked
};

}  // namespace moe::services

#endif  // MOE_SERVICES_ATTENTION_WORKER_EXPERT_CONNECTOR_H_
