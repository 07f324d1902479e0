// The attention worker's side of the NCCL rendezvous (docs/data-plane.md#nccl-rendezvous). Each
// attention worker owns one NCCL communicator with its expert workers: rank 0 is the attention worker,
// rank 1 + e the expert worker of rank e (peer 1000 + e). To (re)form it the connector makes a unique
// id (NcclApi::GetUniqueId), takes the next generation, hands the encoded bootstrap to every expert
// worker over the mTLS control plane (ExpertControl/JoinNccl, which answers once the expert worker has
// started joining) and then joins itself (NcclTransport::Rebuild): that join completes only when
// every rank has joined, so its success is the proof that the whole communicator is up.
//
// With `check_info` set, each attempt first asks every expert worker for its GetInfo and checks it
// (the attention worker checks shard, model fingerprint and data plane, as ExpertConnector does for
// UCX), so no unique id goes to a worker of another layout, model or data plane.
//
// It rebuilds at start and whenever the communicator is lost, with a bounded backoff, in the next
// generation each time, until it succeeds (so a restarted expert worker is taken back as soon as it
// answers, without a request); expert workers that survived rebuild in place. The communicator is
// lost when ReportFailure() says a round failed (the round aborted it) or when the liveness watch
// loses an expert worker (docs/data-plane.md#watching-the-peers): while ready, the connector keeps
// one WatchNccl long poll outstanding on every expert worker (held there for watch_hold). A poll
// that fails (a killed process: its connection resets), is not answered within watch_hold +
// watch_timeout (a hung one) or answers another generation or an unusable one (a restarted one, or
// its side failed) loses that worker: the connector aborts the generation at once
// (NcclTransport::Abort, so a round in progress fails UNAVAILABLE naming the worker within
// milliseconds instead of at its deadline), turns not ready and rebuilds. Each poll (and JoinNccl,
// for the first one) also tells the expert worker how long to wait for the next one (watch_lease),
// after which it aborts its side.
//
// Thread safety: all public methods are thread-safe. One background thread does the rendezvous
// RPCs, another the watch (gRPC's asynchronous API, one completion queue).
#ifndef MOE_SERVICES_ATTENTION_WORKER_NCCL_CONNECTOR_H_
#define MOE_SERVICES_ATTENTION_WORKER_NCCL_CONNECTOR_H_

#include <atomic>
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
#include "common/rpc/tls.h"
#include "common/transport/nccl/nccl_api.h"
#include "common/transport/nccl/nccl_transport.h"
#include "moe/v1/expert_control.grpc.pb.h"

namespace moe::services {

struct NcclConnectorOptions {
  std::vector<std::string> expert_addresses;  // "host:port", index = expert rank
  int attention_rank = 0;
  std::string model_fingerprint;
  int64_t max_round_tokens = 0;  // --max_step_tokens, announced in JoinNccl
  absl::Duration rpc_timeout = absl::Seconds(2);
  // How long this worker waits for every rank to join one generation.
  absl::Duration join_timeout = absl::Seconds(10);
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(2);
  rpc::ClientCredentials credentials;
  // If set, called with each expert worker's GetInfo answer (rank, info) before every rendezvous;
  // an error (e.g. ValidateExpertInfo's FAILED_PRECONDITION) fails the attempt, naming the worker.
  std::function<absl::Status(int rank, const v1::ExpertWorkerInfo& info)> check_info;
  // The liveness watch: how long an expert worker holds a WatchNccl poll (zero: no watch, a lost
  // expert worker is then noticed by the first round that reaches it, at the round's deadline), how
  // much later than that its answer may come, and how long it waits for the next poll.
  absl::Duration watch_hold = absl::Milliseconds(500);
  absl::Duration watch_timeout = absl::Seconds(1);
  absl::Duration watch_lease = absl::Seconds(3);
};

class NcclConnector {
 public:
  // `api` and `transport` (whose self() is this worker's peer id) are not owned and must outlive
  // Stop(). `on_ready_change(ready)` is called from the connector thread when readiness flips.
  NcclConnector(NcclConnectorOptions options, transport::NcclApi* api, transport::NcclTransport* transport,
                std::function<void(bool)> on_ready_change = {});
  ~NcclConnector() { Stop(); }
  NcclConnector(const NcclConnector&) = delete;
  NcclConnector& operator=(const NcclConnector&) = delete;

  void Start();
  // Joins the thread, giving up a join in progress at once (NcclTransport::Interrupt): the transport
  // takes no round afterwards. For shutdown.
  void Stop();

  // True while the communicator of the current generation is joined by every rank.
  bool ready() const;
  // Blocks until ready() or the deadline; returns ready().
  bool WaitReady(absl::Time deadline) const;
  // A round failed (its communicator is aborted): readiness drops and the connector rebuilds.
  void ReportFailure();
  // The generation of the last successful join (0: none yet).
  uint64_t generation() const;
  // Why the connector is not ready (the last rendezvous error or the expert worker the watch lost);
  // empty while ready.
  std::string last_error() const;
  // This process's attention_instance (JoinNcclRequest): random, never 0.
  uint64_t instance() const { return instance_; }

  // One rendezvous attempt in the next generation (what the thread does; public for tests).
  // UNAVAILABLE naming the expert worker whose GetInfo or JoinNccl failed or the ranks that did not
  // join; check_info's error for a worker whose GetInfo it refuses.
  absl::Status RebuildOnce();

 private:
  void Loop();
  void WatchLoop();
  // The watch lost expert worker `rank` in `generation`: abort it and rebuild (if still in use).
  void PeerLost(size_t rank, uint64_t generation, const std::string& why);

  const NcclConnectorOptions options_;
  transport::NcclApi* const api_;
  transport::NcclTransport* const transport_;
  const std::function<void(bool)> on_ready_change_;
  const uint64_t instance_;
  // The last generation handed out: an attempt that failed before joining still used its number
  // (some expert workers may have accepted it), so the next one is above it.
  std::atomic<uint64_t> attempted_generation_{0};
  std::vector<std::unique_ptr<v1::ExpertControl::Stub>> stubs_;
  std::thread thread_;
  std::thread watch_thread_;

  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool ready_ ABSL_GUARDED_BY(mu_) = false;
  bool failed_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  std::string last_error_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe::services

#endif  // MOE_SERVICES_ATTENTION_WORKER_NCCL_CONNECTOR_H_
