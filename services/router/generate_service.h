// moe.v1.Generation on gRPC's callback API: Generate (a ServerWriteReactor per call), GetModelInfo
// and Tokenize (unary reactors).
//
// A Generate call: validate (INVALID_ARGUMENT naming the field) -> admission (AttentionWorkerPool::Submit;
// RESOURCE_EXHAUSTED when the queue is full) -> placement (OnPlaced) -> a WorkerCall to the chosen attention
// worker, whose tokens go through an OutputProcessor (detokenize, think split, stop strings) to the client,
// one client message per worker message (the next worker message is read only after the client took the
// previous one). The last message has `finished`, the finish reason, usage and timings. Client cancel and
// deadline cancel the worker call (the worker call also carries the client's deadline); a failing worker ends
// the stream with its status (UNAVAILABLE for a lost worker).
#ifndef MOE_SERVICES_ROUTER_GENERATE_SERVICE_H_
#define MOE_SERVICES_ROUTER_GENERATE_SERVICE_H_

#include <string>

#include "grpcpp/grpcpp.h"
#include "moe/v1/generate.grpc.pb.h"
#include "services/router/api_keys.h"
#include "services/router/attention_worker_pool.h"
#include "services/router/request_validation.h"
#include "services/router/router_metrics.h"
#include "services/router/served_model.h"

namespace moe::router {

// Thread-safe. `model`, `worker_pool` and `metrics` must outlive the service and every call.
class GenerateService final : public moe::v1::Generation::CallbackService {
 public:
  GenerateService(const ServedModel* model, AttentionWorkerPool* worker_pool, RouterMetrics* metrics,
                  RequestLimits limits = {}, int num_expert_workers = 0);

  grpc::ServerWriteReactor<moe::v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const moe::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const moe::v1::GetModelInfoRequest* request,
                                         moe::v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const moe::v1::TokenizeRequest* request,
                                     moe::v1::TokenizeResponse* response) override;

  const ServedModel& model() const { return *model_; }
  AttentionWorkerPool& worker_pool() { return *worker_pool_; }
  RouterMetrics& metrics() { return *metrics_; }
  const RequestLimits& limits() const { return limits_; }
  // An unguessable id ("req-" + 32 hex digits of a CSPRNG) for the cluster's own use: what attention
  // workers see, and the client's id when it sent none.
  std::string NextRequestId();

  // Requires every call to carry `authorization: Bearer KEY` of `keys` (null: no API keys, the
  // default). Call before serving; `keys` must outlive the service.
  void RequireApiKeys(ApiKeyStore* keys) {
    api_keys_ = keys;
    metrics_->EnableApiKeyMetrics();
  }
  // OK when no keys are required or the call carries a valid key (counted per key name);
  // UNAUTHENTICATED otherwise (counted as a rejection "unauthenticated").
  absl::Status Authorize(const grpc::CallbackServerContext& context);

 private:
  const ServedModel* model_;
  AttentionWorkerPool* worker_pool_;
  RouterMetrics* metrics_;
  const RequestLimits limits_;
  const int num_expert_workers_;
  ApiKeyStore* api_keys_ = nullptr;
};

}  // namespace moe::router

#endif  // MOE_SERVICES_ROUTER_GENERATE_SERVICE_H_
