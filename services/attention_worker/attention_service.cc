#include "services/attention_worker/attention_service.h"

#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging/logging.h"
#include "common/rpc/status.h"
#include "common/rpc/tls.h"

namespace moe::services {
namespace {

// A reactor that only finishes with `status` (rejections before the loop sees the request).
class RejectReactor final : public grpc::ServerWriteReactor<v1::AttentionGenerateResponse> {
 public:
  explicit RejectReactor(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

AttentionService::AttentionService() : control_thread_([this] { RunControl(); }) {}

AttentionService::~AttentionService() {
  {
    absl::MutexLock lock(&control_mu_);
    control_stop_ = true;
  }
  control_thread_.join();
}

void AttentionService::RunControl() {
  while (true) {
    std::function<void()> work;
    {
      absl::MutexLock lock(&control_mu_);
      control_mu_.Await(absl::Condition(
          +[](AttentionService* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->control_mu_) {
            return self->control_stop_ || !self->control_queue_.empty();
          },
          this));
      if (control_queue_.empty()) return;  // stopping, nothing left
      work = std::move(control_queue_.front());
      control_queue_.pop_front();
    }
    work();
  }
}

absl::StatusOr<engine::GenerationRequest> ToGenerationRequest(const v1::AttentionGenerateRequest& request) {
  if (request.request_id().empty()) return absl::InvalidArgumentError("request_id: must not be empty");
  if (request.request_id().size() > 256) {
    return absl::InvalidArgumentError("request_id: is longer than 256 bytes");
  }
  if (request.top_logprobs() < 0 || request.top_logprobs() > 20) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_logprobs: must be in [0, 20], got ", request.top_logprobs()));
  }
  engine::GenerationRequest out;
  out.id = request.request_id();
  out.prompt.assign(request.prompt().begin(), request.prompt().end());
  if (request.has_sampling()) {
    const v1::AttentionSampling& s = request.sampling();
    out.sampling.temperature = s.temperature();
    out.sampling.top_p = s.top_p();
    out.sampling.top_k = s.top_k();
    out.sampling.min_p = s.min_p();
    out.sampling.repetition_penalty = s.repetition_penalty();
    out.sampling.presence_penalty = s.presence_penalty();
    out.sampling.frequency_penalty = s.frequency_penalty();
    out.sampling.seed = s.seed();
  } else {
    out.sampling.temperature = 0.0;  // greedy; the router always sends resolved values
  }
  out.max_new_tokens = request.max_new_tokens();
  out.min_new_tokens = request.min_new_tokens();
  for (int32_t id : request.stop_token_ids()) {
    if (id < 0) return absl::InvalidArgumentError(absl::StrCat("stop_token_ids: negative id ", id));
    out.stop_token_ids.push_back(id);
  }
  out.ignore_eos = request.ignore_eos();
  out.top_logprobs = request.top_logprobs();
  out.generated_offset = request.generated_offset();
  return out;
}

grpc::ServerWriteReactor<v1::AttentionGenerateResponse>* AttentionService::Generate(
    grpc::CallbackServerContext* context, const v1::AttentionGenerateRequest* request) {
  StepLoop* loop = loop_.load();
  if (loop == nullptr) {
    return new RejectReactor(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the attention worker is loading"));
  }
  auto converted = ToGenerationRequest(*request);
  if (!converted.ok()) return new RejectReactor(rpc::ToGrpcStatus(converted.status()));
  converted->id = absl::StrCat(next_sequence_.fetch_add(1), ":", converted->id);
  auto stream =
      std::make_shared<GenerateStream>(converted->id, [loop](const std::string& id) { loop->Cancel(id); });
  auto* reactor = stream->MakeReactor(stream);
  loop->Submit(stream, *std::move(converted));
  return reactor;
}

grpc::ServerUnaryReactor* AttentionService::GetLoad(grpc::CallbackServerContext* context,
                                                    const v1::GetLoadRequest*, v1::WorkerLoad* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  StepLoop* loop = loop_.load();
  if (loop == nullptr) {
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the attention worker is loading"));
    return reactor;
  }
  *response = loop->Load();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* AttentionService::SetExpertPlacement(grpc::CallbackServerContext* context,
                                                               const v1::SetExpertPlacementRequest* request,
                                                               v1::SetExpertPlacementResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (absl::Status s = rpc::RequireCallerRole(*context, rpc::kOperatorRole, "SetExpertPlacement"); !s.ok()) {
    LOG(WARNING) << "SetExpertPlacement refused: " << s.message();
    reactor->Finish(rpc::ToGrpcStatus(s));
    return reactor;
  }
  StepLoop* loop = loop_.load();
  if (loop == nullptr) {
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the attention worker is loading"));
    return reactor;
  }
  std::vector<std::pair<int64_t, int64_t>> extras;
  for (const v1::ExtraExpertCopy& copy : request->extras()) extras.emplace_back(copy.expert(), copy.worker());
  const uint64_t version = request->placement_version();
  const std::optional<uint64_t> replaces =
      request->has_replaces_version() ? std::optional<uint64_t>(request->replaces_version()) : std::nullopt;
  // SwitchPlacement checks the expert workers with blocking GetInfo calls: not on this gRPC thread.
  absl::MutexLock lock(&control_mu_);
  control_queue_.push_back([loop, extras = std::move(extras), reactor, response, version, replaces] {
    loop->SwitchPlacement(version, extras, replaces, [reactor, response, version](absl::Status status) {
      if (status.ok()) {
        LOG(INFO) << "expert placement version " << version << " in use";
        response->set_placement_version(version);
      } else {
        LOG(WARNING) << "SetExpertPlacement refused: " << status;
      }
      reactor->Finish(rpc::ToGrpcStatus(status));
    });
  });
  return reactor;
}

}  // namespace moe::services
