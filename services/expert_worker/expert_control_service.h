// gRPC surface of the expert worker: moe.v1.ExpertControl (expert_control.proto) over an
// ExpertWorker.
// Thread safety: RPCs run on gRPC threads; ExpertWorker's methods used here are thread-safe.
#ifndef MOE_SERVICES_EXPERT_WORKER_EXPERT_CONTROL_SERVICE_H_
#define MOE_SERVICES_EXPERT_WORKER_EXPERT_CONTROL_SERVICE_H_

#include <atomic>
#include <functional>

#include "moe/v1/expert_control.grpc.pb.h"
#include "services/expert_worker/expert_worker.h"
#include "services/expert_worker/nccl_links.h"

namespace moe::services {

class ExpertControlService final : public v1::ExpertControl::Service {
 public:
  // RPCs answer UNAVAILABLE ("loading") until SetWorker. `worker` is not owned and must outlive
  // the service. The server starts before the weights load so that health probes answer meanwhile.
  // `on_drain` runs once, at the first Drain (the service's readiness turns NOT_SERVING there).
  explicit ExpertControlService(std::function<void()> on_drain = {}) : on_drain_(std::move(on_drain)) {}
  void SetWorker(ExpertWorker* worker) { worker_ = worker; }
  // The NCCL data plane's links (not owned; outlives the service), for JoinNccl. Without them
  // (the UCX data plane) JoinNccl is FAILED_PRECONDITION.
  void SetNcclLinks(NcclExpertLinks* links) { nccl_links_ = links; }

  grpc::Status GetInfo(grpc::ServerContext* context, const v1::GetInfoRequest* request,
                       v1::ExpertWorkerInfo* response) override;
  // Idempotent: connecting the same attention worker again replaces its endpoint. Only for callers
  // with an attention worker's certificate (PERMISSION_DENIED otherwise; rpc::RequireCallerRole).
  grpc::Status Connect(grpc::ServerContext* context, const v1::ConnectRequest* request,
                       v1::ConnectResponse* response) override;
  // After Drain, Connect is refused with UNAVAILABLE (the worker is going away). Only for callers
  // with an operator's certificate.
  grpc::Status Drain(grpc::ServerContext* context, const v1::DrainRequest* request,
                     v1::DrainResponse* response) override;

  // ExpertWorker::LoadExtraExperts; only for callers with an operator's certificate.
  grpc::Status LoadExtraExperts(grpc::ServerContext* context, const v1::LoadExtraExpertsRequest* request,
                                v1::LoadExtraExpertsResponse* response) override;

  // NcclExpertLinks::Join (docs/data-plane.md#nccl-rendezvous). Only for callers with an attention
  // worker's certificate; refused with UNAVAILABLE after Drain, like Connect.
  grpc::Status JoinNccl(grpc::ServerContext* context, const v1::JoinNcclRequest* request,
                        v1::JoinNcclResponse* response) override;

  // NcclExpertLinks::Watch, the NCCL data plane's liveness watch (docs/data-plane.md#watching-the-peers).
  // Only for callers with an attention worker's certificate; UNAVAILABLE after Drain; FAILED_PRECONDITION
  // without the NCCL data plane.
  grpc::Status WatchNccl(grpc::ServerContext* context, const v1::WatchNcclRequest* request,
                         v1::WatchNcclResponse* response) override;

  bool drained() const { return drained_.load(); }

 private:
  std::atomic<ExpertWorker*> worker_{nullptr};
  std::atomic<NcclExpertLinks*> nccl_links_{nullptr};
  std::atomic<bool> drained_{false};
  const std::function<void()> on_drain_;
};

}  // namespace moe::services

#endif  // MOE_SERVICES_EXPERT_WORKER_EXPERT_CONTROL_SERVICE_H_
