#include "services/expert_worker/expert_control_service.h"

#include <optional>
#include <vector>

#include "common/logging/logging.h"
#include "common/rpc/status.h"
#include "common/rpc/tls.h"

namespace moe::services {
namespace {

const grpc::Status kLoading(grpc::StatusCode::UNAVAILABLE, "the expert worker is loading its shard");

}  // namespace

grpc::Status ExpertControlService::GetInfo(grpc::ServerContext*, const v1::GetInfoRequest*,
                                           v1::ExpertWorkerInfo* response) {
  ExpertWorker* worker = worker_.load();
  if (worker == nullptr) return kLoading;
  *response = worker->info();
  response->set_draining(drained_ || worker->draining());
  return grpc::Status::OK;
}

grpc::Status ExpertControlService::Connect(grpc::ServerContext* context, const v1::ConnectRequest* request,
                                           v1::ConnectResponse* response) {
  if (absl::Status s = rpc::RequireCallerRole(*context, rpc::kAttentionWorkerRole, "Connect"); !s.ok()) {
    LOG(WARNING) << "Connect refused: " << s.message();
    return rpc::ToGrpcStatus(s);
  }
  ExpertWorker* worker = worker_.load();
  if (worker == nullptr) return kLoading;
  if (drained_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the expert worker is draining");
  absl::StatusOr<std::string> secret =
      worker->ConnectAttention(request->peer_id(), request->address(), request->model_fingerprint(),
                               request->data_plane_secret(), request->max_round_tokens());
  if (!secret.ok()) {
    LOG(WARNING) << "Connect from attention rank " << request->attention_rank()
                 << " refused: " << secret.status();
    return rpc::ToGrpcStatus(secret.status());
  }
  LOG(INFO) << "connected to attention worker peer " << request->peer_id();
  *response->mutable_info() = worker->info();
  response->set_data_plane_secret(*std::move(secret));
  return grpc::Status::OK;
}

grpc::Status ExpertControlService::JoinNccl(grpc::ServerContext* context, const v1::JoinNcclRequest* request,
                                            v1::JoinNcclResponse* response) {
  if (absl::Status s = rpc::RequireCallerRole(*context, rpc::kAttentionWorkerRole, "JoinNccl"); !s.ok()) {
    LOG(WARNING) << "JoinNccl refused: " << s.message();
    return rpc::ToGrpcStatus(s);
  }
  NcclExpertLinks* links = nccl_links_.load();
  if (links == nullptr) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "this expert worker's data plane is not NCCL (--transport)");
  }
  if (drained_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the expert worker is draining");
  absl::StatusOr<uint64_t> generation =
      links->Join(request->peer_id(), request->attention_instance(), request->model_fingerprint(),
                  request->nccl_bootstrap(), request->max_round_tokens(), request->watch_lease_ms());
  if (!generation.ok()) {
    LOG(WARNING) << "JoinNccl from attention rank " << request->attention_rank()
                 << " refused: " << generation.status();
    return rpc::ToGrpcStatus(generation.status());
  }
  response->set_generation(*generation);
  response->set_peer_id(links->self_peer());
  return grpc::Status::OK;
}

grpc::Status ExpertControlService::WatchNccl(grpc::ServerContext* context,
                                             const v1::WatchNcclRequest* request,
                                             v1::WatchNcclResponse* response) {
  if (absl::Status s = rpc::RequireCallerRole(*context, rpc::kAttentionWorkerRole, "WatchNccl"); !s.ok()) {
    LOG(WARNING) << "WatchNccl refused: " << s.message();
    return rpc::ToGrpcStatus(s);
  }
  NcclExpertLinks* links = nccl_links_.load();
  if (links == nullptr) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "this expert worker's data plane is not NCCL (--transport)");
  }
  if (drained_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the expert worker is draining");
  absl::StatusOr<NcclExpertLinks::WatchState> state =
      links->Watch(request->peer_id(), request->attention_instance(), request->generation(),
                   request->hold_ms(), request->lease_ms(), [context] { return context->IsCancelled(); });
  if (!state.ok()) return rpc::ToGrpcStatus(state.status());
  response->set_generation(state->generation);
  response->set_usable(state->usable);
  response->set_peer_id(links->self_peer());
  return grpc::Status::OK;
}

grpc::Status ExpertControlService::Drain(grpc::ServerContext* context, const v1::DrainRequest*,
                                         v1::DrainResponse* response) {
  if (absl::Status s = rpc::RequireCallerRole(*context, rpc::kOperatorRole, "Drain"); !s.ok()) {
    LOG(WARNING) << "Drain refused: " << s.message();
    return rpc::ToGrpcStatus(s);
  }
  ExpertWorker* worker = worker_.load();
  if (worker == nullptr) return kLoading;
  if (!drained_.exchange(true)) {
    LOG(INFO) << "draining: readiness NOT_SERVING, new Connects refused";
    if (on_drain_) on_drain_();
  }
  response->set_rounds_served(worker->Drain());
  return grpc::Status::OK;
}

grpc::Status ExpertControlService::LoadExtraExperts(grpc::ServerContext* context,
                                                    const v1::LoadExtraExpertsRequest* request,
                                                    v1::LoadExtraExpertsResponse* response) {
  if (absl::Status s = rpc::RequireCallerRole(*context, rpc::kOperatorRole, "LoadExtraExperts"); !s.ok()) {
    LOG(WARNING) << "LoadExtraExperts refused: " << s.message();
    return rpc::ToGrpcStatus(s);
  }
  ExpertWorker* worker = worker_.load();
  if (worker == nullptr) return kLoading;
  const std::vector<int32_t> experts(request->experts().begin(), request->experts().end());
  if (absl::Status s = worker->LoadExtraExperts(request->placement_version(), experts,
                                                request->has_replaces_version()
                                                    ? std::optional<uint64_t>(request->replaces_version())
                                                    : std::nullopt);
      !s.ok()) {
    LOG(WARNING) << "LoadExtraExperts refused: " << s;
    return rpc::ToGrpcStatus(s);
  }
  LOG(INFO) << "placement version " << request->placement_version() << ": serving " << experts.size()
            << " extra experts";
  *response->mutable_info() = worker->info();
  return grpc::Status::OK;
}

}  // namespace moe::services
