#include "tests/integration/client/cluster_client.h"

#include <chrono>
#include <map>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/engine/engine.h"
#include "moe/v1/generate.grpc.pb.h"

namespace moe::testing {

v1::GenerateRequest GreedyRequest(const std::vector<int32_t>& prompt, int max_new_tokens) {
  v1::GenerateRequest request;
  for (int32_t id : prompt) request.mutable_token_ids()->add_ids(id);
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_sampling()->set_max_new_tokens(max_new_tokens);
  request.mutable_sampling()->set_ignore_eos(true);
  return request;
}

GenerateResult Generate(const std::string& router, const v1::GenerateRequest& request, absl::Duration timeout,
                        const std::function<void(const v1::GenerateResponse&)>& on_response) {
  auto stub = v1::Generation::NewStub(grpc::CreateChannel(router, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  auto reader = stub->Generate(&context, request);
  GenerateResult result;
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    if (on_response) on_response(response);
    for (const v1::GeneratedToken& token : response.tokens()) {
      result.tokens.push_back(token.token_id());
      result.logprobs.push_back(token.logprob());
      std::vector<Alternative>& top = result.top_logprobs.emplace_back();
      for (const v1::TokenLogprob& alt : token.top_logprobs()) top.push_back({alt.token_id(), alt.logprob()});
    }
    result.text += response.text();
    if (response.finished()) {
      result.finish = response.finish_reason();
      result.completion_tokens = response.usage().completion_tokens();
    }
  }
  result.status = reader->Finish();
  result.ended = absl::Now();
  return result;
}

namespace {

v1::FinishReason ToProto(engine::FinishReason reason) {
  switch (reason) {
    case engine::FinishReason::kNone:
      return v1::FINISH_REASON_UNSPECIFIED;
    case engine::FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case engine::FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case engine::FinishReason::kAbort:
      return v1::FINISH_REASON_ABORT;
    case engine::FinishReason::kError:
      return v1::FINISH_REASON_ERROR;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

absl::StatusOr<engine::GenerationRequest> ToEngineRequest(const v1::GenerateRequest& in, size_t index) {
  if (!in.has_token_ids()) {
    return absl::InvalidArgumentError(absl::StrCat("request ", index, ": only token_ids input is supported"));
  }
  engine::GenerationRequest out;
  out.id = std::to_string(index);
  out.prompt.assign(in.token_ids().ids().begin(), in.token_ids().ids().end());
  const v1::SamplingParams& s = in.sampling();
  if (s.has_temperature()) out.sampling.temperature = s.temperature();
  if (s.has_top_p()) out.sampling.top_p = s.top_p();
  if (s.has_top_k()) out.sampling.top_k = s.top_k();
  if (s.has_min_p()) out.sampling.min_p = s.min_p();
  if (s.has_repetition_penalty()) out.sampling.repetition_penalty = s.repetition_penalty();
  if (s.has_presence_penalty()) out.sampling.presence_penalty = s.presence_penalty();
  if (s.has_frequency_penalty()) out.sampling.frequency_penalty = s.frequency_penalty();
  if (s.has_seed()) out.sampling.seed = s.seed();
  if (s.has_max_new_tokens()) out.max_new_tokens = s.max_new_tokens();
  if (s.has_min_new_tokens()) out.min_new_tokens = s.min_new_tokens();
  out.stop_token_ids.assign(s.stop_token_ids().begin(), s.stop_token_ids().end());
  out.ignore_eos = s.ignore_eos();
  out.top_logprobs = in.logprobs();
  return out;
}

}  // namespace

absl::StatusOr<std::vector<GenerateResult>> GenerateEmbedded(
    const std::string& model_dir, const std::vector<v1::GenerateRequest>& requests) {
  auto engine = engine::Engine::CreateEmbedded(model_dir, engine::EngineOptions{}, 1);
  if (!engine.ok()) return engine.status();
  for (size_t i = 0; i < requests.size(); ++i) {
    absl::StatusOr<engine::GenerationRequest> request = ToEngineRequest(requests[i], i);
    if (!request.ok()) return request.status();
    if (absl::Status s = (*engine)->AddRequest(*request); !s.ok()) return s;
  }
  std::vector<GenerateResult> results(requests.size());
  while ((*engine)->HasWork()) {
    for (const engine::TokenEvent& event : (*engine)->Step()) {
      GenerateResult& r = results[std::stoul(event.request_id)];
      if (event.token_id >= 0) {
        r.tokens.push_back(event.token_id);
        r.logprobs.push_back(event.logprob);
        std::vector<Alternative>& top = r.top_logprobs.emplace_back();
        for (const auto& alt : event.top_logprobs) top.push_back({alt.token_id, alt.logprob});
      }
      if (event.finish_reason != engine::FinishReason::kNone) {
        r.finish = ToProto(event.finish_reason);
        r.completion_tokens = static_cast<int>(event.completion_tokens);
        r.ended = absl::Now();
      }
    }
  }
  return results;
}

}  // namespace moe::testing
