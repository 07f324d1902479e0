#include "services/expert_worker/nccl_links.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/logging/logging.h"

namespace moe::services {
namespace {

constexpr int32_t kMaxAttentionPeer = 1000;  // attention ranks are below the expert peer ids

}  // namespace

NcclExpertLinks::NcclExpertLinks(NcclLinksOptions options, transport::NcclApi* api,
                                 NcclDispatchHandler handler)
    : options_(std::move(options)), api_(api), handler_(std::move(handler)) {
  watchdog_ = std::thread([this] { Watchdog(); });
}

absl::StatusOr<uint64_t> NcclExpertLinks::Join(int32_t attention_peer, uint64_t attention_instance,
                                               const std::string& fingerprint, std::string_view bootstrap,
                                               int64_t max_round_tokens, int64_t watch_lease_ms) {
  if (attention_peer < 0 || attention_peer >= kMaxAttentionPeer) {
    return absl::InvalidArgumentError(
        absl::StrCat("peer_id: ", attention_peer, " is not an attention worker's peer id (0..999)"));
  }
  if (attention_instance == 0) return absl::InvalidArgumentError("attention_instance: must not be 0");
  if (watch_lease_ms < 0 || watch_lease_ms > 600000) {
    return absl::InvalidArgumentError(
        absl::StrCat("watch_lease_ms: ", watch_lease_ms, " is not in [0, 600000]"));
  }
  if (!fingerprint.empty() && fingerprint != options_.model_fingerprint) {
    return absl::FailedPreconditionError(absl::StrCat("model_fingerprint: ", fingerprint,
                                                      " is not this worker's model (",
                                                      options_.model_fingerprint, ")"));
  }
  if (max_round_tokens <= 0 || max_round_tokens > options_.max_round_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("max_round_tokens: ", max_round_tokens, " is not in [1, ",
                                                   options_.max_round_tokens, "] (--max_round_tokens)"));
  }
  absl::StatusOr<transport::NcclBootstrap> decoded = transport::DecodeNcclBootstrap(bootstrap);
  if (!decoded.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("nccl_bootstrap: ", decoded.status().message()));
  }
  if (decoded->peers[0] != attention_peer) {
    return absl::InvalidArgumentError(absl::StrCat("nccl_bootstrap: rank 0 is peer ", decoded->peers[0],
                                                   ", expected the caller's peer id ", attention_peer));
  }
  if (std::find(decoded->peers.begin(), decoded->peers.end(), options_.self_peer) == decoded->peers.end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "nccl_bootstrap: the rank map does not list this worker's peer id ", options_.self_peer));
  }

  std::unique_ptr<Link> replaced;
  uint64_t generation = decoded->generation;
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return absl::UnavailableError("the expert worker is stopping");
    auto it = links_.find(attention_peer);
    if (it != links_.end() && it->second->instance == attention_instance) {
      Link& link = *it->second;
      if (generation <= link.accepted_generation) {
        return absl::FailedPreconditionError(
            absl::StrCat("nccl_bootstrap: generation ", generation, " is not above generation ",
                         link.accepted_generation, " this attention worker already sent (stale)"));
      }
      if (max_round_tokens != link.max_round_tokens) {
        return absl::InvalidArgumentError(absl::StrCat("max_round_tokens: ", max_round_tokens,
                                                       " differs from the ", link.max_round_tokens,
                                                       " this attention worker announced before"));
      }
    } else {
      // A new attention worker, or a restarted one (its generations start over): a fresh link.
      if (it != links_.end()) replaced = std::move(it->second);
      auto link = std::make_unique<Link>();
      link->peer = attention_peer;
      link->instance = attention_instance;
      link->max_round_tokens = max_round_tokens;
      transport::NcclTransportOptions topts;
      topts.max_message_bytes =
          options_.message_bound ? options_.message_bound(max_round_tokens) : topts.max_message_bytes;
      topts.send_timeout = options_.send_timeout;
      link->transport = std::make_unique<transport::NcclTransport>(options_.self_peer, api_, topts);
      Link* raw = link.get();
      links_[attention_peer] = std::move(link);
      raw->thread = std::thread([this, raw] { Serve(raw); });
      it = links_.find(attention_peer);
    }
    Link& link = *it->second;
    link.accepted_generation = generation;
    link.lost_generation = 0;
    link.join_lease_ms = watch_lease_ms;
    link.pending = *std::move(decoded);
    // Preempt the link's idle receive (or an older join) so that it takes the new bootstrap now.
    link.transport->Interrupt(generation);
  }
  if (replaced != nullptr) {
    LOG(INFO) << "attention worker peer " << attention_peer << " restarted: its NCCL link starts over";
    const transport::DropCounts drops = replaced->transport->drop_counts();
    StopLink(std::move(replaced));
    absl::MutexLock lock(&mu_);
    for (size_t r = 0; r < drops.size(); ++r) retired_drops_[r] += drops[r];
  }
  return generation;
}

void NcclExpertLinks::StopLink(std::unique_ptr<Link> link) {
  {
    absl::MutexLock lock(&mu_);
    link->stop = true;
  }
  link->transport->Shutdown();  // wakes a round in progress with CANCELLED
  if (link->thread.joinable()) link->thread.join();
}

void NcclExpertLinks::Stop() {
  std::map<int32_t, std::unique_ptr<Link>> links;
  {
    absl::MutexLock lock(&mu_);
    stopped_ = true;
    links.swap(links_);
    // A Watch in progress returns at once (stopped_), and none starts now: none refers to a link.
    mu_.Await(absl::Condition(
        +[](int* watchers) { return *watchers == 0; }, &watchers_));
  }
  if (watchdog_.joinable()) watchdog_.join();
  for (auto& [peer, link] : links) StopLink(std::move(link));
}

NcclExpertLinks::Link* NcclExpertLinks::FindLink(int32_t attention_peer, uint64_t attention_instance) {
  auto it = links_.find(attention_peer);
  if (it == links_.end() || it->second->instance != attention_instance) return nullptr;
  return it->second.get();
}

void NcclExpertLinks::AbortWatched(Link& link, const std::string& why) {
  const uint64_t generation = link.accepted_generation;
  if (generation == 0 || link.lost_generation == generation) return;
  LOG(WARNING) << "NCCL link to attention worker peer " << link.peer << ": " << why << "; generation "
               << generation << " aborted, waiting for a new bootstrap";
  link.lost_generation = generation;
  // Wakes the link's receive (or join): it fails, and the link waits for the next bootstrap.
  link.transport->Abort(generation, why);
}

absl::StatusOr<NcclExpertLinks::WatchState> NcclExpertLinks::Watch(int32_t attention_peer,
                                                                   uint64_t attention_instance,
                                                                   uint64_t generation, int64_t hold_ms,
                                                                   int64_t lease_ms,
                                                                   const std::function<bool()>& cancelled) {
  if (attention_peer < 0 || attention_peer >= kMaxAttentionPeer) {
    return absl::InvalidArgumentError(
        absl::StrCat("peer_id: ", attention_peer, " is not an attention worker's peer id (0..999)"));
  }
  if (attention_instance == 0) return absl::InvalidArgumentError("attention_instance: must not be 0");
  if (generation == 0) return absl::InvalidArgumentError("generation: must not be 0");
  if (hold_ms < 1 || hold_ms > 60000) {
    return absl::InvalidArgumentError(absl::StrCat("hold_ms: ", hold_ms, " is not in [1, 60000]"));
  }
  if (lease_ms < 1 || lease_ms > 600000) {
    return absl::InvalidArgumentError(absl::StrCat("lease_ms: ", lease_ms, " is not in [1, 600000]"));
  }
  absl::MutexLock lock(&mu_);
  if (stopped_) return absl::UnavailableError("the expert worker is stopping");
  ++watchers_;
  bool was_cancelled = false;
  if (InUse(attention_peer, attention_instance, generation)) {
    Link* link = FindLink(attention_peer, attention_instance);
    ++link->polls;
    link->watched_generation = generation;
    const absl::Time until = absl::Now() + absl::Milliseconds(hold_ms);
    // In slices of 50 ms: gRPC's sync API has no wake-up for a cancelled call, it has to be asked.
    while (true) {
      mu_.AwaitWithDeadline(absl::Condition(&stopped_),
                            std::min(until, absl::Now() + absl::Milliseconds(50)));
      if (stopped_ || !InUse(attention_peer, attention_instance, generation) || absl::Now() >= until) break;
      if (cancelled()) {
        was_cancelled = true;
        break;
      }
    }
    // The same object unless that process's link was replaced meanwhile (then it is not ours to touch).
    if (FindLink(attention_peer, attention_instance) == link) {
      --link->polls;
      if (!was_cancelled && !stopped_ && cancelled()) was_cancelled = true;
      if (!was_cancelled) {
        link->lease_deadline = absl::Now() + absl::Milliseconds(lease_ms);
      } else if (InUse(attention_peer, attention_instance, generation)) {
        AbortWatched(*link,
                     absl::StrCat("attention worker peer ", attention_peer, " stopped watching generation ",
                                  generation, " (its WatchNccl was cancelled: it is gone or left it)"));
      }
    }
  }
  WatchState state;
  if (const Link* link = FindLink(attention_peer, attention_instance); link != nullptr) {
    state.generation = link->accepted_generation;
    state.usable = link->lost_generation != link->accepted_generation;
  }
  --watchers_;
  if (stopped_) return absl::UnavailableError("the expert worker is stopping");
  return state;
}

bool NcclExpertLinks::InUse(int32_t attention_peer, uint64_t attention_instance, uint64_t generation) {
  const Link* link = FindLink(attention_peer, attention_instance);
  return link != nullptr && link->accepted_generation == generation && link->lost_generation != generation;
}

void NcclExpertLinks::Watchdog() {
  absl::MutexLock lock(&mu_);
  while (!stopped_) {
    mu_.AwaitWithTimeout(absl::Condition(&stopped_), absl::Milliseconds(100));
    const absl::Time now = absl::Now();
    for (auto& [peer, link] : links_) {
      if (link->polls == 0 && link->watched_generation != 0 &&
          link->watched_generation == link->accepted_generation && now > link->lease_deadline) {
        AbortWatched(*link, absl::StrCat("no WatchNccl from attention worker peer ", peer,
                                         " within its lease (it hangs or is gone)"));
      }
    }
  }
}

void NcclExpertLinks::Serve(Link* link) {
  transport::NcclTransport& transport = *link->transport;
  while (true) {
    std::optional<transport::NcclBootstrap> bootstrap;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](Link* l) { return l->stop || l->pending.has_value() || l->serving_generation != 0; }, link));
      if (link->stop) return;
      if (link->pending.has_value()) {
        bootstrap = std::move(link->pending);
        link->pending.reset();
        link->serving_generation = 0;
      }
    }
    if (bootstrap.has_value()) {
      const absl::Status joined = transport.Rebuild(*bootstrap, absl::Now() + options_.join_timeout);
      absl::MutexLock lock(&mu_);
      if (joined.ok()) {
        link->serving_generation = bootstrap->generation;
        // Watched from now on if the attention worker said it watches: its first poll is due.
        if (link->join_lease_ms > 0 && link->accepted_generation == bootstrap->generation) {
          link->watched_generation = bootstrap->generation;
          link->lease_deadline = absl::Now() + absl::Milliseconds(link->join_lease_ms);
        }
        LOG(INFO) << "NCCL link to attention worker peer " << link->peer << ": joined generation "
                  << bootstrap->generation << " (" << bootstrap->peers.size() << " ranks)";
      } else {
        link->lost_generation = std::max(link->lost_generation, bootstrap->generation);
        if (joined.code() != absl::StatusCode::kCancelled) {
          LOG(WARNING) << "NCCL link to attention worker peer " << link->peer << ": " << joined;
        }
      }
      continue;
    }
    // Serving: the next dispatch may be a long time coming (an idle attention worker), so no
    // deadline; a new bootstrap (Interrupt) or Stop (Shutdown) ends the wait.
    absl::StatusOr<transport::Message> dispatch =
        transport.ReceiveFrom(link->peer, transport::MessageKind::kDispatch, absl::InfiniteFuture());
    absl::Status status = dispatch.status();
    if (dispatch.ok()) {
      const NcclAnswer answer = handler_(*dispatch);
      transport::MessageTag tag = dispatch->tag;
      tag.kind = transport::MessageKind::kCombine;
      tag.sender = options_.self_peer;
      status = transport.Send(link->peer, tag, answer.payload);
      if (answer.done) answer.done(status);
    }
    absl::MutexLock lock(&mu_);
    if (status.ok()) {
      ++rounds_;
      continue;
    }
    if (status.code() == absl::StatusCode::kCancelled || link->stop) return;
    // A tag mismatch leaves the communicator usable; anything else (a dead peer, an interrupt)
    // aborted it, and the link waits for the next bootstrap.
    if (!transport.connected()) {
      link->lost_generation = std::max(link->lost_generation, link->serving_generation);
      if (link->pending == std::nullopt) {
        LOG(WARNING) << "NCCL link to attention worker peer " << link->peer << " lost generation "
                     << link->serving_generation << ": " << status << "; waiting for a new bootstrap";
      }
      link->serving_generation = 0;
    }
  }
}

uint64_t NcclExpertLinks::serving_generation(int32_t attention_peer) const {
  absl::MutexLock lock(&mu_);
  auto it = links_.find(attention_peer);
  return it == links_.end() ? 0 : it->second->serving_generation;
}

const transport::NcclTransport* NcclExpertLinks::transport(int32_t attention_peer) const {
  absl::MutexLock lock(&mu_);
  auto it = links_.find(attention_peer);
  return it == links_.end() ? nullptr : it->second->transport.get();
}

uint64_t NcclExpertLinks::rounds_served() const {
  absl::MutexLock lock(&mu_);
  return rounds_;
}

transport::DropCounts NcclExpertLinks::drop_counts() const {
  absl::MutexLock lock(&mu_);
  transport::DropCounts counts = retired_drops_;
  for (const auto& [peer, link] : links_) {
    const transport::DropCounts drops = link->transport->drop_counts();
    for (size_t r = 0; r < drops.size(); ++r) counts[r] += drops[r];
  }
  return counts;
}

}  // namespace moe::services
