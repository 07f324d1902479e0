// The expert worker's side of the NCCL data plane (docs/data-plane.md#nccl-rendezvous): one
// NcclTransport per attention worker, each a member of the communicator that attention worker owns
// (NCCL rank 0: the attention worker; then the expert workers in rank order).
//
// Join() is the JoinNccl RPC's work: it validates the request and the bootstrap (INVALID_ARGUMENT /
// FAILED_PRECONDITION naming the field), hands the bootstrap to that attention worker's link thread
// and returns at once, because the join completes only when every rank has joined and the other
// expert workers get their JoinNccl after this one. The link thread then serves rounds: it waits
// (without a deadline: an idle attention worker sends nothing) for the next dispatch from its
// attention worker, whatever its step (NcclTransport::ReceiveFrom), runs the handler and sends the
// combine answer with the dispatch's tag. A new bootstrap preempts that wait (NcclTransport::
// Interrupt), so a survivor of a peer's restart rebuilds in place, keeping its transport and
// buffers. A Join with a new attention_instance is a restarted attention worker: its link starts
// over with a fresh transport.
//
// Thread safety: Join and the accessors may be called from any thread (gRPC's).
#ifndef MOE_SERVICES_EXPERT_WORKER_NCCL_LINKS_H_
#define MOE_SERVICES_EXPERT_WORKER_NCCL_LINKS_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/transport/nccl/nccl_api.h"
#include "common/transport/nccl/nccl_bootstrap.h"
#include "common/transport/nccl/nccl_transport.h"

namespace moe::services {

struct NcclLinksOptions {
  int32_t self_peer = 0;  // this expert worker's data-plane peer id (1000 + rank)
  std::string model_fingerprint;
  // The most tokens per round an attention worker may announce (as --max_round_tokens for UCX).
  int64_t max_round_tokens = 65536;
  // The largest dispatch message of a round of `max_round_tokens` tokens (transport::MaxMoeMessageSize
  // over this worker's shard): the link's NcclTransportOptions::max_message_bytes.
  std::function<size_t(int64_t max_round_tokens)> message_bound;
  // How long a link waits for every rank to join a bootstrap, and for a combine answer to be taken.
  absl::Duration join_timeout = absl::Seconds(30);
  absl::Duration send_timeout = absl::Seconds(10);
};

// The answer to one dispatch: the combine payload (an empty message for a dispatch it cannot serve,
// as engine::ExpertShardServer does, so the sender fails its round on the layout at once), and what
// to do once it is sent (or not: `sent` says), e.g. count the round (may be empty). `done` is called
// before the dispatch the handler was given is released, so it may refer to it.
struct NcclAnswer {
  std::vector<std::byte> payload;
  std::function<void(const absl::Status& sent)> done;
};
// Serves one dispatch. Called from the links' threads, one per attention worker, so possibly
// concurrently (the expert worker's is engine::ExpertRoundHandler, as ExpertShardServer's rounds).
using NcclDispatchHandler = std::function<NcclAnswer(const transport::Message& dispatch)>;

class NcclExpertLinks {
 public:
  // `api` is not owned and must outlive the links.
  NcclExpertLinks(NcclLinksOptions options, transport::NcclApi* api, NcclDispatchHandler handler);
  ~NcclExpertLinks() { Stop(); }
  NcclExpertLinks(const NcclExpertLinks&) = delete;
  NcclExpertLinks& operator=(const NcclExpertLinks&) = delete;

  // The JoinNccl RPC: returns the generation the link is now joining. INVALID_ARGUMENT naming the
  // field for a peer id outside [0, 1000), an attention_instance of 0, a max_round_tokens outside
  // [1, options.max_round_tokens] or different from the one this attention process announced
  // before, an undecodable bootstrap, one whose rank 0 is not the caller or that does not list
  // this worker; FAILED_PRECONDITION for another model's fingerprint or a generation not above one
  // this attention process already sent (a stale bootstrap); UNAVAILABLE after Stop.
  absl::StatusOr<uint64_t> Join(int32_t attention_peer, uint64_t attention_instance,
                                const std::string& fingerprint, std::string_view bootstrap,
                                int64_t max_round_tokens);

  // Shuts every link's transport down and joins the threads. Idempotent.
  void Stop();

  // The generation attention worker `peer`'s link has joined and serves (0: none, or not usable).
  uint64_t serving_generation(int32_t attention_peer) const;
  // The link's transport (null if none): the same object across rebuilds of one attention process.
  const transport::NcclTransport* transport(int32_t attention_peer) const;
  uint64_t rounds_served() const;
  // Messages the links' transports dropped, by reason (transport::DropReason), over every link this
  // object has had (a restarted attention worker's old link included), so the counts only grow.
  transport::DropCounts drop_counts() const;
  int32_t self_peer() const { return options_.self_peer; }

 private:
  struct Link {
    int32_t peer = 0;
    uint64_t instance = 0;
    int64_t max_round_tokens = 0;
    uint64_t accepted_generation = 0;  // the newest bootstrap Join accepted
    std::unique_ptr<transport::NcclTransport> transport;
    std::optional<transport::NcclBootstrap> pending;  // guarded by mu_
    uint64_t serving_generation = 0;                  // guarded by mu_
    bool stop = false;                                // guarded by mu_
    std::thread thread;
  };
  void Serve(Link* link);
  void StopLink(std::unique_ptr<Link> link);

  const NcclLinksOptions options_;
  transport::NcclApi* const api_;
  const NcclDispatchHandler handler_;

  mutable absl::Mutex mu_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::map<int32_t, std::unique_ptr<Link>> links_ ABSL_GUARDED_BY(mu_);
  uint64_t rounds_ ABSL_GUARDED_BY(mu_) = 0;
  transport::DropCounts retired_drops_ ABSL_GUARDED_BY(mu_){};  // of links replaced since
};

}  // namespace moe::services

#endif  // MOE_SERVICES_EXPERT_WORKER_NCCL_LINKS_H_
