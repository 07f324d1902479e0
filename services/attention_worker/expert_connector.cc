#include "services/attention_worker/expert_connector.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/engine/expert_placement.h"
#include "common/logging/logging.h"
#include "common/transport/moe_message.h"
#include "grpcpp/grpcpp.h"

namespace moe::services {
namespace {

constexpr int32_t kFirstExpertPeer = 1000;  // engine/expert_placement.h numbering

}  // namespace

absl::Status ValidateExpertInfo(const v1::ExpertWorkerInfo& info, int rank, int num_workers,
                                int64_t num_experts, const std::string& fingerprint, int replicas,
                                v1::DataPlane data_plane) {
  auto mismatch = [&](const char* field, auto got, auto want) {
    return absl::FailedPreconditionError(
        absl::StrCat("expert worker ", rank, ": ", field, " is ", got, ", expected ", want));
  };
  if (info.rank() != rank) return mismatch("rank", info.rank(), rank);
  if (info.num_expert_workers() != num_workers) {
    return mismatch("num_expert_workers", info.num_expert_workers(), num_workers);
  }
  // An expert worker that predates replicas reports 0: one copy.
  const int info_replicas = info.expert_replicas() == 0 ? 1 : info.expert_replicas();
  if (info_replicas != replicas) return mismatch("expert_replicas", info_replicas, replicas);
  const engine::ExpertRange range =
      engine::ExpertPlacement::WorkerRange(num_experts, num_workers, replicas, rank);
  if (info.first_expert() != range.first) return mismatch("first_expert", info.first_expert(), range.first);
  if (info.num_experts() != range.count) return mismatch("num_experts", info.num_experts(), range.count);
  if (info.peer_id() != kFirstExpertPeer + rank) {
    return mismatch("peer_id", info.peer_id(), kFirstExpertPeer + rank);
  }
  if (info.data_plane() != data_plane) {
    return mismatch("data_plane", v1::DataPlane_Name(info.data_plane()), v1::DataPlane_Name(data_plane));
  }
  if (info.model_fingerprint() != fingerprint) {
    return mismatch("model_fingerprint", info.model_fingerprint(), fingerprint);
  }
  return absl::OkStatus();
}

ExpertConnector::ExpertConnector(ExpertConnectorOptions options, transport::UcxTransport* transport,
                                 std::function<void(bool)> on_ready_change)
    : options_(std::move(options)), transport_(transport), on_ready_change_(std::move(on_ready_change)) {
  for (const std::string& address : options_.expert_addresses) {
    Peer peer;
    peer.address = address;
    peer.stub = v1::ExpertControl::NewStub(options_.credentials.CreateChannel(address));
    peers_.push_back(std::move(peer));
  }
  peer_failed_.assign(peers_.size(), false);
}

void ExpertConnector::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void ExpertConnector::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

bool ExpertConnector::ready() const {
  absl::MutexLock lock(&mu_);
  return ready_;
}

void ExpertConnector::ReportFailure() {
  bool was_ready;
  {
    absl::MutexLock lock(&mu_);
    was_ready = ready_;
    ready_ = false;
    recheck_ = true;
  }
  if (was_ready && on_ready_change_) on_ready_change_(false);
}

void ExpertConnector::ReportPeerFailure(int rank, const absl::Status& why) {
  LOG(WARNING) << "expert worker " << rank << " failed a round, failing over to its replicas: " << why;
  absl::MutexLock lock(&mu_);
  if (rank < 0 || rank >= static_cast<int>(peer_failed_.size())) return;
  peer_failed_[static_cast<size_t>(rank)] = true;
}

bool ExpertConnector::WaitReady(absl::Time deadline) const {
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithDeadline(absl::Condition(
                            +[](const bool* ready) { return *ready; }, &ready_),
                        deadline);
  return ready_;
}

bool ExpertConnector::CheckPeer(int rank, bool force_reconnect) {
  Peer& peer = peers_[static_cast<size_t>(rank)];
  auto set_error = [&](const std::string& error) {
    if (peer.connected || error != peer.last_error) {
      LOG(WARNING) << "expert worker " << rank << " (" << peer.address << ") not connected: " << error;
    }
    peer.connected = false;
    peer.last_error = error;
    return false;
  };
  grpc::ClientContext info_context;
  info_context.set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
  v1::ExpertWorkerInfo info;
  grpc::Status rpc = peer.stub->GetInfo(&info_context, v1::GetInfoRequest(), &info);
  if (!rpc.ok()) {
    std::string error = absl::StrCat("GetInfo: ", rpc.error_message());
    if (absl::StrContains(absl::AsciiStrToLower(error), "handshake")) {
      absl::StrAppend(&error,
                      " (TLS handshake failed: are this worker's --tls_cert and the expert worker's "
                      "signed by the same cluster CA, --tls_ca?)");
    }
    return set_error(error);
  }
  peer.draining = info.draining();
  if (peer.connected && !force_reconnect && info.address() == peer.data_address) return true;

  absl::Status valid = ValidateExpertInfo(info, rank, num_home_workers(), options_.num_experts,
                                          options_.model_fingerprint, options_.expert_replicas);
  if (!valid.ok()) return set_error(std::string(valid.message()));
  // Admit the expert worker's answers first (a fresh secret, replacing any earlier one), so that by
  // the time it can answer us they are accepted. Its combine messages mirror our dispatches: at
  // most max_round_tokens tokens of min(top_k, hosted) rows each.
  // A worker that accepts the balancer's extra experts may answer for any expert of the model.
  const int64_t answerable = info.extra_expert_budget_bytes() > 0 ? options_.num_experts : info.num_experts();
  absl::StatusOr<std::string> our_secret = transport_->Admit(
      info.peer_id(), transport::MaxMoeMessageSize(options_.hidden_size, answerable,
                                                   options_.experts_per_token, options_.max_round_tokens));
  if (!our_secret.ok()) return set_error(absl::StrCat("UCX admit: ", our_secret.status().ToString()));
  grpc::ClientContext connect_context;
  connect_context.set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
  v1::ConnectRequest request;
  request.set_attention_rank(options_.attention_rank);
  request.set_peer_id(transport_->self());
  request.set_address(transport_->WorkerAddress());
  request.set_model_fingerprint(options_.model_fingerprint);
  request.set_data_plane_secret(*our_secret);
  request.set_max_round_tokens(options_.max_round_tokens);
  v1::ConnectResponse response;
  rpc = peer.stub->Connect(&connect_context, request, &response);
  if (!rpc.ok()) return set_error(absl::StrCat("Connect: ", rpc.error_message()));
  // Connect validates the address (framing, checksum, size, UCX header) before UCX sees it, replaces
  // an endpoint to a previous incarnation and clears its recorded failure.
  absl::Status local = transport_->Connect(info.peer_id(), info.address(), response.data_plane_secret());
  if (!local.ok()) return set_error(absl::StrCat("UCX connect: ", local.ToString()));
  peer.connected = true;
  peer.data_address = info.address();
  peer.last_error.clear();
  LOG(INFO) << "expert worker " << rank << " connected, experts [" << info.first_expert() << ", "
            << info.first_expert() + info.num_experts() << ")";
  return true;
}

void ExpertConnector::Loop() {
  absl::Duration backoff = options_.initial_backoff;
  const int num_peers = static_cast<int>(peers_.size());
  const int num_home = num_home_workers();  // the rest are joinable workers
  const int replicas = std::max(1, options_.expert_replicas);
  const int num_shards = std::max(1, num_home / replicas);  // Create validated the placement
  while (true) {
    bool force;
    std::vector<bool> failed;
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
      force = recheck_;
      recheck_ = false;
      failed = peer_failed_;
      peer_failed_.assign(peer_failed_.size(), false);
    }
    bool all = true;  // every worker connected (a dense model has none to wait for)
    std::vector<bool> connected(static_cast<size_t>(num_peers), false);
    // Every shard needs a connected copy (a dense model has no expert workers and no shards).
    std::vector<bool> shard_covered(static_cast<size_t>(num_peers > 0 ? num_shards : 0), false);
    for (int rank = 0; rank < num_peers; ++rank) {
      if (failed[static_cast<size_t>(rank)]) peers_[static_cast<size_t>(rank)].connected = false;
      connected[static_cast<size_t>(rank)] = CheckPeer(rank, force || failed[static_cast<size_t>(rank)]);
      all = all && connected[static_cast<size_t>(rank)];
      // Only the home workers make the connector ready: a joinable worker's experts are copies.
      if (connected[static_cast<size_t>(rank)] && rank < num_home)
        shard_covered[static_cast<size_t>(rank % num_shards)] = true;
    }
    for (int rank = 0; rank < num_peers; ++rank) {
      Peer& peer = peers_[static_cast<size_t>(rank)];
      const bool live = connected[static_cast<size_t>(rank)];
      // A draining worker hands its rounds to another connected, non-draining copy of its shard.
      // A joinable worker's experts always have their home copies, so it hands over at once.
      bool handed_over = rank >= num_home && live && peer.draining;
      for (int other = rank % num_shards; live && peer.draining && other < num_home; other += num_shards) {
        if (other != rank && connected[static_cast<size_t>(other)] &&
            !peers_[static_cast<size_t>(other)].draining) {
          handed_over = true;
        }
      }
      if (handed_over && !peer.handed_over) {
        LOG(INFO) << "expert worker " << rank << " is draining: its shard's other copies take its rounds";
      }
      peer.handed_over = handed_over;
      if (options_.liveness != nullptr) options_.liveness->Set(rank, live && !handed_over);
    }
    bool ready = std::all_of(shard_covered.begin(), shard_covered.end(), [](bool c) { return c; });
    bool changed;
    {
      absl::MutexLock lock(&mu_);
      // A failure reported while we were checking wins: check again before claiming readiness.
      if (recheck_) ready = all = false;
      changed = ready_ != ready;
      ready_ = ready;
    }
    if (changed && on_ready_change_) on_ready_change_(ready);
    const absl::Duration wait = all ? options_.monitor_interval : backoff;
    backoff = all ? options_.initial_backoff : std::min(backoff * 2, options_.max_backoff);
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(
                             +[](ExpertConnector* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) {
                               return self->stop_ || self->recheck_ ||
                                      std::find(self->peer_failed_.begin(), self->peer_failed_.end(), true) !=
                                          self->peer_failed_.end();
                             },
                             this),
                         wait);
  }
}

}  // namespace moe::services

namespace moe::services {

absl::Status ExpertConnector::CheckHoldsExtras(const engine::ExpertPlacement& placement) const {
  for (int64_t w = 0; w < placement.num_workers(); ++w) {
    const std::vector<int64_t> wanted = placement.extra_experts(w);
    if (wanted.empty()) continue;
    if (w >= static_cast<int64_t>(options_.expert_addresses.size())) {
      return absl::InvalidArgumentError(absl::StrCat("extras: expert worker ", w, " does not exist"));
    }
    // A joinable worker must be connected (UCX endpoint and Connect done) before rows go to it.
    if (placement.joinable(w) && options_.liveness != nullptr && !options_.liveness->live(w)) {
      return absl::FailedPreconditionError(absl::StrCat("extras: expert worker ", w, " (joinable, ",
                                                        options_.expert_addresses[static_cast<size_t>(w)],
                                                        ") is not connected yet"));
    }
    // A fresh GetInfo (not the monitor's last one): LoadExtraExperts may have returned just now.
    auto stub = v1::ExpertControl::NewStub(
        options_.credentials.CreateChannel(options_.expert_addresses[static_cast<size_t>(w)]));
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
    v1::ExpertWorkerInfo info;
    const grpc::Status rpc = stub->GetInfo(&context, v1::GetInfoRequest(), &info);
    if (!rpc.ok()) {
      return absl::UnavailableError(absl::StrCat("expert worker ", w, ": GetInfo: ", rpc.error_message()));
    }
    for (int64_t e : wanted) {
      // A joinable worker holds its shard from the start: what it serves as home is a copy here.
      const bool in_its_shard = placement.joinable(w) && e >= info.first_expert() &&
                                e < static_cast<int64_t>(info.first_expert()) + info.num_experts();
      if (!in_its_shard && std::find(info.extra_experts().begin(), info.extra_experts().end(), e) ==
                               info.extra_experts().end()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "extras: expert worker ", w, " does not hold expert ", e, " (call its LoadExtraExperts first)"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace moe::services
