// Greedy generations compared with embedded mode, shared by the tests that serve the tiny model
// through an attention worker (in separate processes or in one) and check that its tokens and
// logprobs are embedded mode's, bit for bit: the prompts, the request, reading the Generate stream,
// and the embedded engine's own answer.
#ifndef MOE_TESTS_UTIL_GENERATION_GREEDY_GENERATION_H_
#define MOE_TESTS_UTIL_GENERATION_GREEDY_GENERATION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "moe/v1/attention.grpc.pb.h"

namespace moe::testing {

// What one generation streamed: the tokens with their logprobs, how the stream ended and, when it
// said so, why the sequence finished.
struct Generated {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  grpc::Status status;
  v1::AttentionFinishReason finish_reason = v1::ATTENTION_FINISH_REASON_UNSPECIFIED;
};

// Three prompts: five tokens, one token, and 17 tokens of a repeated pair (prefix reuse within one
// prompt).
const std::vector<std::vector<int32_t>>& Prompts();

// A greedy AttentionWorker/Generate request: temperature 0, top_p 1, no top_k, no repetition
// penalty, `max_new_tokens` tokens whatever the model says (ignore_eos).
v1::AttentionGenerateRequest GreedyRequest(const std::string& id, const std::vector<int32_t>& prompt,
                                           int max_new_tokens);

// Sends `request` to `stub` and reads the stream to its end, giving up after `deadline`.
Generated Generate(v1::AttentionWorker::Stub& stub, const v1::AttentionGenerateRequest& request,
                   absl::Duration deadline);

// The same greedy generation in embedded mode (512 KV blocks), the reference: a failed engine start
// or request is a test failure (EXPECT) with empty output.
Generated Embedded(const std::string& model, const std::vector<int32_t>& prompt, int max_new_tokens);

}  // namespace moe::testing

#endif  // MOE_TESTS_UTIL_GENERATION_GREEDY_GENERATION_H_
