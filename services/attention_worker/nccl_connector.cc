#include "services/attention_worker/nccl_connector.h"

#include <algorithm>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/engine/expert_placement.h"
#include "common/logging/logging.h"
#include "common/status/status_macros.h"
#include "common/transport/nccl/nccl_bootstrap.h"
#include "grpcpp/grpcpp.h"

namespace moe::services {
namespace {

uint64_t RandomInstance() {
  std::random_device device;
  uint64_t value = 0;
  while (value == 0) value = (static_cast<uint64_t>(device()) << 32) ^ device();
  return value;
}

}  // namespace

NcclConnector::NcclConnector(NcclConnectorOptions options, transport::NcclApi* api,
                             transport::NcclTransport* transport, std::function<void(bool)> on_ready_change)
    : options_(std::move(options)),
      api_(api),
      transport_(transport),
      on_ready_change_(std::move(on_ready_change)),
      instance_(RandomInstance()) {
  for (const std::string& address : options_.expert_addresses) {
    stubs_.push_back(v1::ExpertControl::NewStub(options_.credentials.CreateChannel(address)));
  }
}

void NcclConnector::Start() {
  thread_ = std::thread([this] { Loop(); });
  if (options_.watch_hold > absl::ZeroDuration()) watch_thread_ = std::thread([this] { WatchLoop(); });
}

void NcclConnector::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  // A join in progress gives up at once (no generation reaches this).
  transport_->Interrupt(UINT64_MAX);
  if (thread_.joinable()) thread_.join();
  if (watch_thread_.joinable()) watch_thread_.join();
}

bool NcclConnector::ready() const {
  absl::MutexLock lock(&mu_);
  return ready_;
}

bool NcclConnector::WaitReady(absl::Time deadline) const {
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithDeadline(absl::Condition(&ready_), deadline);
  return ready_;
}

uint64_t NcclConnector::generation() const {
  absl::MutexLock lock(&mu_);
  return generation_;
}

std::string NcclConnector::last_error() const {
  absl::MutexLock lock(&mu_);
  return ready_ ? std::string() : last_error_;
}

void NcclConnector::ReportFailure() {
  bool was_ready;
  {
    absl::MutexLock lock(&mu_);
    was_ready = ready_;
    ready_ = false;
    failed_ = true;
  }
  if (was_ready && on_ready_change_) on_ready_change_(false);
}

absl::Status NcclConnector::RebuildOnce() {
  if (options_.check_info) {
    // Every expert worker's layout, model and data plane before any of them gets a unique id.
    for (size_t rank = 0; rank < stubs_.size(); ++rank) {
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
      v1::ExpertWorkerInfo info;
      const grpc::Status rpc = stubs_[rank]->GetInfo(&context, v1::GetInfoRequest(), &info);
      if (!rpc.ok()) {
        return absl::UnavailableError(absl::StrCat("expert worker ", rank, " (",
                                                   options_.expert_addresses[rank],
                                                   "): GetInfo: ", rpc.error_message()));
      }
      RETURN_IF_ERROR(options_.check_info(static_cast<int>(rank), info));
    }
  }
  transport::NcclBootstrap bootstrap;
  const transport::NcclResult made = api_->GetUniqueId(&bootstrap.unique_id);
  if (made != transport::NcclResult::kSuccess) {
    return absl::InternalError(
        absl::StrCat("ncclGetUniqueId: ", transport::NcclResultName(made), " ", api_->LastError(nullptr)));
  }
  // Above every generation tried before (the transport counts its joins, failed ones included; an
  // attempt whose JoinNccl failed never reached it but may have reached some expert workers).
  bootstrap.generation = std::max(attempted_generation_.load(), transport_->generation()) + 1;
  attempted_generation_.store(bootstrap.generation);
  bootstrap.peers.push_back(transport_->self());
  for (size_t rank = 0; rank < stubs_.size(); ++rank) {
    bootstrap.peers.push_back(engine::kFirstExpertPeerId + static_cast<int32_t>(rank));
  }
  // A round stuck on a dead peer holds the transport: give it up now.
  transport_->Interrupt(bootstrap.generation);
  v1::JoinNcclRequest request;
  request.set_attention_rank(options_.attention_rank);
  request.set_peer_id(transport_->self());
  request.set_model_fingerprint(options_.model_fingerprint);
  request.set_nccl_bootstrap(transport::EncodeNcclBootstrap(bootstrap));
  request.set_attention_instance(instance_);
  request.set_max_round_tokens(options_.max_round_tokens);
  if (options_.watch_hold > absl::ZeroDuration()) {
    request.set_watch_lease_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(options_.watch_lease)));
  }
  for (size_t rank = 0; rank < stubs_.size(); ++rank) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
    v1::JoinNcclResponse response;
    const grpc::Status rpc = stubs_[rank]->JoinNccl(&context, request, &response);
    if (!rpc.ok()) {
      // The expert workers already given this bootstrap give it up when the next one comes.
      return absl::UnavailableError(absl::StrCat("expert worker ", rank, " (",
                                                 options_.expert_addresses[rank],
                                                 "): JoinNccl: ", rpc.error_message()));
    }
    if (response.generation() != bootstrap.generation ||
        response.peer_id() != engine::kFirstExpertPeerId + static_cast<int32_t>(rank)) {
      return absl::UnavailableError(absl::StrCat(
          "expert worker ", rank, " (", options_.expert_addresses[rank], "): JoinNccl answered generation ",
          response.generation(), " as peer ", response.peer_id(), ", expected generation ",
          bootstrap.generation, " as peer ", engine::kFirstExpertPeerId + static_cast<int32_t>(rank)));
    }
  }
  return transport_->Rebuild(bootstrap, absl::Now() + options_.join_timeout);
}

void NcclConnector::Loop() {
  absl::Duration backoff = options_.initial_backoff;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](NcclConnector* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) {
            return self->stop_ || !self->ready_ || self->failed_;
          },
          this));
      if (stop_) return;
      failed_ = false;
    }
    const absl::Status status = RebuildOnce();
    bool changed = false;
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
      // A failure reported while joining wins: rebuild again.
      const bool ready = status.ok() && !failed_;
      changed = ready != ready_;
      ready_ = ready;
      if (status.ok()) {
        generation_ = transport_->generation();
        last_error_.clear();
        LOG(INFO) << "NCCL communicator generation " << generation_ << " joined by " << stubs_.size() + 1
                  << " ranks";
        backoff = options_.initial_backoff;
      } else {
        if (status.ToString() != last_error_) LOG(WARNING) << "NCCL rendezvous: " << status;
        last_error_ = status.ToString();
      }
    }
    if (changed && on_ready_change_) on_ready_change_(status.ok());
    if (!status.ok()) {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stop_), backoff);
      backoff = std::min(backoff * 2, options_.max_backoff);
    }
  }
}

void NcclConnector::PeerLost(size_t rank, uint64_t generation, const std::string& why) {
  const std::string text =
      absl::StrCat("expert worker ", rank, " (peer ", engine::kFirstExpertPeerId + static_cast<int32_t>(rank),
                   ", ", options_.expert_addresses[rank], ") lost: ", why);
  {
    absl::MutexLock lock(&mu_);
    // Already given up (a failed round, another worker lost) or stopping: nothing more to do.
    if (stop_ || !ready_ || generation_ != generation) return;
    ready_ = false;
    failed_ = true;
    last_error_ = text;
  }
  LOG(WARNING) << "NCCL communicator generation " << generation << ": " << text << "; aborted, rebuilding";
  // A round waiting on that worker fails now, with `text`, instead of at its deadline.
  transport_->Abort(generation, text);
  if (on_ready_change_) on_ready_change_(false);
}

void NcclConnector::WatchLoop() {
  // One poll outstanding per expert worker while ready; all on one completion queue.
  struct Poll {
    size_t rank = 0;
    uint64_t generation = 0;
    bool cancelled = false;
    grpc::ClientContext context;
    v1::WatchNcclResponse response;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::WatchNcclResponse>> reader;
  };
  const absl::Duration patience = options_.watch_hold + options_.watch_timeout;
  grpc::CompletionQueue queue;
  std::vector<std::unique_ptr<Poll>> polls(stubs_.size());
  size_t in_flight = 0;
  while (true) {
    bool stop;
    uint64_t watched;
    {
      absl::MutexLock lock(&mu_);
      stop = stop_;
      watched = ready_ ? generation_ : 0;
    }
    for (size_t rank = 0; rank < stubs_.size(); ++rank) {
      if (Poll* poll = polls[rank].get(); poll != nullptr) {
        // A poll of a generation given up: cancelling it tells the expert worker to abort its side.
        if ((stop || poll->generation != watched) && !poll->cancelled) {
          poll->context.TryCancel();
          poll->cancelled = true;
        }
        continue;
      }
      if (stop || watched == 0) continue;
      auto poll = std::make_unique<Poll>();
      poll->rank = rank;
      poll->generation = watched;
      poll->context.set_deadline(absl::ToChronoTime(absl::Now() + patience));
      v1::WatchNcclRequest request;
      request.set_peer_id(transport_->self());
      request.set_attention_instance(instance_);
      request.set_generation(watched);
      request.set_hold_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(options_.watch_hold)));
      request.set_lease_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(options_.watch_lease)));
      poll->reader = stubs_[rank]->AsyncWatchNccl(&poll->context, request, &queue);
      poll->reader->Finish(&poll->response, &poll->status, poll.get());
      polls[rank] = std::move(poll);
      ++in_flight;
    }
    if (stop && in_flight == 0) break;
    void* tag = nullptr;
    bool ok = false;
    // The tick bounds how late a change of readiness (a new generation to watch) is noticed.
    const grpc::CompletionQueue::NextStatus next =
        queue.AsyncNext(&tag, &ok, absl::ToChronoTime(absl::Now() + absl::Milliseconds(50)));
    if (next == grpc::CompletionQueue::SHUTDOWN) break;
    if (next != grpc::CompletionQueue::GOT_EVENT) continue;
    const Poll* done = static_cast<Poll*>(tag);
    const std::unique_ptr<Poll> poll = std::move(polls[done->rank]);
    --in_flight;
    if (poll->cancelled) continue;
    std::string why;
    if (poll->status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      why = absl::StrCat("no answer to WatchNccl within ", absl::FormatDuration(patience), " (it hangs)");
    } else if (!poll->status.ok()) {
      why = absl::StrCat("WatchNccl failed: ", poll->status.error_message(), " (code ",
                         static_cast<int>(poll->status.error_code()), ")");
    } else if (poll->response.generation() != poll->generation) {
      why = absl::StrCat("it is on generation ", poll->response.generation(), ", not ", poll->generation,
                         " (restarted)");
    } else if (!poll->response.usable()) {
      why = absl::StrCat("its side of generation ", poll->generation, " failed");
    }
    if (!why.empty()) PeerLost(poll->rank, poll->generation, why);
  }
  queue.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (queue.Next(&tag, &ok)) {
  }
}

}  // namespace moe::services
