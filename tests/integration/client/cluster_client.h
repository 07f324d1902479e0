// Client helpers shared by the cluster integration tests and bench/cluster/cluster_bench.cc
// (library moe_cluster_client): deterministic prompts, Generate requests, one blocking streaming
// Generate call through a router, and the embedded engine's answer to the same requests (the
// reference a cluster must reproduce).
//
// Thread safety: every function is thread-safe (no shared state); Generate may be called from many
// threads at once against one router.
#ifndef MOE_TESTS_INTEGRATION_CLIENT_CLUSTER_CLIENT_H_
#define MOE_TESTS_INTEGRATION_CLIENT_CLUSTER_CLIENT_H_

#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "moe/v1/generate.pb.h"

namespace moe::testing {

// Prompts: engine_testing::PseudoRandomPrompt (common/engine/testing/requests.h).

// A request for `prompt` (token ids) with temperature 0, `max_new_tokens` and ignore_eos, so that
// exactly `max_new_tokens` tokens come back.
v1::GenerateRequest GreedyRequest(const std::vector<int32_t>& prompt, int max_new_tokens);

// One top-logprob alternative of a generated token.
struct Alternative {
  int32_t token_id = -1;
  float logprob = 0.0f;
  bool operator==(const Alternative&) const = default;
};
inline void PrintTo(const Alternative& a, std::ostream* os) {
  *os << a.token_id << ":" << a.logprob;
}

// What one Generate stream returned.
struct GenerateResult {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;                         // one per token
  std::vector<std::vector<Alternative>> top_logprobs;  // one list per token (empty lists without logprobs)
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  int completion_tokens = 0;
  std::string text;
  grpc::Status status;
  absl::Time ended;  // when the stream's Finish returned
};

// Sends `request` to the router at `router` ("host:port") with a deadline of `timeout` and reads the
// stream to its end. `on_response`, if set, sees every response as it arrives (on this thread).
GenerateResult Generate(const std::string& router, const v1::GenerateRequest& request,
                        absl::Duration timeout = absl::Seconds(120),
                        const std::function<void(const v1::GenerateResponse&)>& on_response = {});

// The embedded engine's answer (one shard, default EngineOptions) to `requests`, all admitted
// together and stepped to completion in one batch; result i belongs to request i. Only token_ids
// input is supported (INVALID_ARGUMENT otherwise). Unset sampling fields take engine::SamplingParams'
// defaults, not generation_config's as the router's: a test comparing sampled output sets them all.
// Errors: the engine's creation or admission error.
absl::StatusOr<std::vector<GenerateResult>> GenerateEmbedded(
    const std::string& model_dir, const std::vector<v1::GenerateRequest>& requests);

}  // namespace moe::testing

#endif  // MOE_TESTS_INTEGRATION_CLIENT_CLUSTER_CLIENT_H_
