#include "services/router/generate_service.h"

#include <random>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/rpc/status.h"
#include "services/router/generate_call.h"

namespace moe::router {

GenerateService::GenerateService(const ServedModel* model, AttentionWorkerPool* worker_pool,
                                 RouterMetrics* metrics, RequestLimits limits, int num_expert_workers)
    : model_(model),
      worker_pool_(worker_pool),
      metrics_(metrics),
      limits_(limits),
      num_expert_workers_(num_expert_workers) {}

std::string GenerateService::NextRequestId() {
  // std::random_device reads the kernel's CSPRNG (getrandom) on Linux with libstdc++.
  thread_local std::random_device random;
  std::string bytes(16, '\0');
  for (size_t i = 0; i < bytes.size(); i += 4) {
    const uint32_t word = random();
    for (size_t j = 0; j < 4; ++j) bytes[i + j] = static_cast<char>(word >> (8 * j));
  }
  return absl::StrCat("req-", absl::BytesToHexString(bytes));
}

absl::Status GenerateService::Authorize(const grpc::CallbackServerContext& context) {
  if (api_keys_ == nullptr) return absl::OkStatus();
  absl::string_view authorization;
  const auto& metadata = context.client_metadata();
  if (auto it = metadata.find("authorization"); it != metadata.end()) {
    authorization = absl::string_view(it->second.data(), it->second.size());
  }
  absl::StatusOr<std::string> name = api_keys_->Authenticate(authorization);
  if (!name.ok()) {
    metrics_->Rejected("unauthenticated", grpc::StatusCode::UNAUTHENTICATED);
    return name.status();
  }
  metrics_->ApiKeyUsed(*name);
  return absl::OkStatus();
}

grpc::ServerWriteReactor<moe::v1::GenerateResponse>* GenerateService::Generate(
    grpc::CallbackServerContext* context, const moe::v1::GenerateRequest* request) {
  return new GenerateCall(this, context, *request);
}

grpc::ServerUnaryReactor* GenerateService::GetModelInfo(grpc::CallbackServerContext* context,
                                                        const moe::v1::GetModelInfoRequest* /*request*/,
                                                        moe::v1::ModelInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (absl::Status s = Authorize(*context); !s.ok()) {
    reactor->Finish(rpc::ToGrpcStatus(s));
    return reactor;
  }
  const model::ModelConfig& c = model_->config;
  response->set_model(model_->name);
  response->set_model_type(c.model_type);
  response->set_vocab_size(static_cast<int32_t>(c.vocab_size));
  response->set_max_context_length(static_cast<int32_t>(c.max_position_embeddings));
  response->set_num_experts(static_cast<int32_t>(c.num_experts));
  response->set_num_experts_per_token(static_cast<int32_t>(c.num_experts_per_tok));
  response->set_num_layers(static_cast<int32_t>(c.num_hidden_layers));
  response->set_weight_dtype(model_->weight_dtype());
  response->set_num_attention_workers(static_cast<int32_t>(worker_pool_->num_workers()));
  response->set_num_expert_workers(num_expert_workers_);
  response->set_num_ready_attention_workers(static_cast<int32_t>(worker_pool_->num_ready_workers()));
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* GenerateService::Tokenize(grpc::CallbackServerContext* context,
                                                    const moe::v1::TokenizeRequest* request,
                                                    moe::v1::TokenizeResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (absl::Status s = Authorize(*context); !s.ok()) {
    reactor->Finish(rpc::ToGrpcStatus(s));
    return reactor;
  }
  absl::StatusOr<std::vector<int32_t>> ids;
  switch (request->input_case()) {
    case moe::v1::TokenizeRequest::kText:
      ids = TokenizeText(*model_, request->text(), limits_, "text");
      break;
    case moe::v1::TokenizeRequest::kChat:
      ids = TokenizeChat(*model_, request->chat(), limits_, "chat");
      break;
    case moe::v1::TokenizeRequest::INPUT_NOT_SET:
      ids = absl::InvalidArgumentError("input: no input: set text or chat");
      break;
  }
  if (ids.ok()) response->mutable_ids()->Add(ids->begin(), ids->end());
  reactor->Finish(rpc::ToGrpcStatus(ids.status()));
  return reactor;
}

}  // namespace moe::router
