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
// Watch() is the WatchNccl RPC's work (docs/data-plane.md#watching-the-peers): the attention worker
// keeps a long poll outstanding here for the generation it uses, and this side aborts that
// generation's communicator (NcclTransport::Abort) when the attention worker stops watching it: a
// poll it cancels (it is gone: a reset connection; or it left the generation), or no next poll
// within the poll's lease (it hangs). The link then waits for the next bootstrap, as after a failed
// round. A link is watched from the completion of its join (with the lease JoinNccl announced) or
// from its first poll in the generation.
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

  // The JoinNccl RPC: returns the generation the link is now joining. With `watch_lease_ms` above 0
  // the link is watched from the moment its join completes: a WatchNccl poll must come within that
  // long. INVALID_ARGUMENT naming the field for a peer id outside [0, 1000), an attention_instance of
  // 0, a watch_lease_ms above 600000, a max_round_tokens outside
  // [1, options.max_round_tokens] or different from the one this attention process announced
  // before, an undecodable bootstrap, one whose rank 0 is not the caller or that does not list
  // this worker; FAILED_PRECONDITION for another model's fingerprint or a generation not above one
  // this attention process already sent (a stale bootstrap); UNAVAILABLE after Stop.
  absl::StatusOr<uint64_t> Join(int32_t attention_peer, uint64_t attention_instance,
                                const std::string& fingerprint, std::string_view bootstrap,
                                int64_t max_round_tokens, int64_t watch_lease_ms = 0);

  // The WatchNccl RPC: holds for `hold_ms` while attention worker `attention_peer` (process
  // `attention_instance`) has a link in `generation` that is usable here, returns at once when not or
  // when that changes, and answers the link's state. If `cancelled()` turns true meanwhile (polled
  // every 50 ms) the caller stopped watching: that generation is aborted here. Otherwise the next poll
  // must come within `lease_ms` of the answer. INVALID_ARGUMENT naming the field for a peer id
  // outside [0, 1000), an attention_instance or generation of 0, hold_ms outside [1, 60000] or
  // lease_ms outside [1, 600000]; UNAVAILABLE after Stop.
  struct WatchState {
    uint64_t generation = 0;  // the newest generation accepted from that process (0: none)
    bool usable = false;      // that generation's communicator is joined or joining, not aborted
  };
  absl::StatusOr<WatchState> Watch(int32_t attention_peer, uint64_t attention_instance, uint64_t generation,
                                   int64_t hold_ms, int64_t lease_ms, const std::function<bool()>& cancelled);

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
    // The generation whose communicator failed or was aborted here (usable: accepted != lost).
    uint64_t lost_generation = 0;  // guarded by mu_
    // The watch: the generation polled, polls in progress, when the next one must have come.
    uint64_t watched_generation = 0;  // guarded by mu_
    int polls = 0;                    // guarded by mu_
    int64_t join_lease_ms = 0;        // the accepted bootstrap's watch_lease_ms; guarded by mu_
    absl::Time lease_deadline = absl::InfiniteFuture();  // guarded by mu_
    std::thread thread;
  };
  void Serve(Link* link);
  void StopLink(std::unique_ptr<Link> link);
  // The link of that attention process, or null.
  Link* FindLink(int32_t attention_peer, uint64_t attention_instance) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether that process's link is in `generation` and its communicator usable here.
  bool InUse(int32_t attention_peer, uint64_t attention_instance, uint64_t generation)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Aborts `link`'s communicator of its accepted generation, for `why`.
  void AbortWatched(Link& link, const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Aborts the watched links whose lease ran out (ticks every 100 ms until Stop).
  void Watchdog();

  const NcclLinksOptions options_;
  transport::NcclApi* const api_;
  const NcclDispatchHandler handler_;

  mutable absl::Mutex mu_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  int watchers_ ABSL_GUARDED_BY(mu_) = 0;  // Watch calls in progress (Stop waits for them)
  std::map<int32_t, std::unique_ptr<Link>> links_ ABSL_GUARDED_BY(mu_);
  uint64_t rounds_ ABSL_GUARDED_BY(mu_) = 0;
  transport::DropCounts retired_drops_ ABSL_GUARDED_BY(mu_){};  // of links replaced since
  std::thread watchdog_;
};

}  // namespace moe::services

#endif  // MOE_SERVICES_EXPERT_WORKER_NCCL_LINKS_H_
