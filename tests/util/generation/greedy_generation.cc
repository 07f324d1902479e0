#include "tests/util/generation/greedy_generation.h"

#include "absl/time/clock.h"
#include "common/engine/engine.h"
#include "gtest/gtest.h"

namespace moe::testing {

const std::vector<std::vector<int32_t>>& Prompts() {
  static const auto* prompts = new std::vector<std::vector<int32_t>>{
      {1, 2, 3, 4, 5}, {42}, {7, 100, 7, 100, 7, 100, 7, 100, 7, 100, 7, 100, 7, 100, 7, 100, 9}};
  return *prompts;
}

v1::AttentionGenerateRequest GreedyRequest(const std::string& id, const std::vector<int32_t>& prompt,
                                           int max_new_tokens) {
  v1::AttentionGenerateRequest request;
  request.set_request_id(id);
  for (int32_t t : prompt) request.add_prompt(t);
  v1::AttentionSampling* sampling = request.mutable_sampling();
  sampling->set_temperature(0);
  sampling->set_top_p(1);
  sampling->set_top_k(0);
  sampling->set_repetition_penalty(1);
  request.set_max_new_tokens(max_new_tokens);
  request.set_ignore_eos(true);
  return request;
}

Generated Generate(v1::AttentionWorker::Stub& stub, const v1::AttentionGenerateRequest& request,
                   absl::Duration deadline) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  auto reader = stub.Generate(&context, request);
  Generated out;
  v1::AttentionGenerateResponse response;
  while (reader->Read(&response)) {
    for (const auto& token : response.tokens()) {
      out.tokens.push_back(token.token_id());
      out.logprobs.push_back(token.logprob());
    }
    if (response.finished()) out.finish_reason = response.finish_reason();
  }
  out.status = reader->Finish();
  return out;
}

Generated Embedded(const std::string& model, const std::vector<int32_t>& prompt, int max_new_tokens) {
  engine::EngineOptions options;
  options.num_kv_blocks = 512;
  auto engine = engine::Engine::CreateEmbedded(model, options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  Generated out;
  if (!engine.ok()) return out;
  engine::GenerationRequest request;
  request.id = "embedded";
  request.prompt = prompt;
  request.sampling.temperature = 0;
  request.max_new_tokens = max_new_tokens;
  request.ignore_eos = true;
  EXPECT_TRUE((*engine)->AddRequest(request).ok());
  while ((*engine)->HasWork()) {
    for (const engine::TokenEvent& event : (*engine)->Step()) {
      if (event.token_id >= 0) {
        out.tokens.push_back(event.token_id);
        out.logprobs.push_back(event.logprob);
      }
    }
  }
  return out;
}

}  // namespace moe::testing
