// Validation of public requests and their translation into what an attention worker runs. Every
// error is INVALID_ARGUMENT whose message starts with the offending field's path in the request
// (e.g. "sampling.top_p: must be in (0, 1], got 1.5").
#ifndef MOE_SERVICES_ROUTER_REQUEST_VALIDATION_H_
#define MOE_SERVICES_ROUTER_REQUEST_VALIDATION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moe/v1/attention.pb.h"
#include "moe/v1/generate.pb.h"
#include "services/router/served_model.h"

namespace moe::router {

// Limits on request fields. Text and chat content beyond max_input_bytes is INVALID_ARGUMENT
// (naming the field) rather than a transport error; the server's gRPC receive limit
// (kMaxReceiveMessageBytes) is larger, so only requests beyond it get gRPC's own
// RESOURCE_EXHAUSTED.
struct RequestLimits {
  size_t max_input_bytes = 1 << 20;
  size_t max_stop_strings = 16;
  size_t max_stop_bytes = 256;
  size_t max_stop_token_ids = 64;
  // chat.tools entries (OpenAI's limit), and tool calls per chat message. Their bytes count
  // towards max_input_bytes with the messages'.
  size_t max_tools = 128;
  size_t max_tool_calls_per_message = 128;
  int32_t max_logprobs = 20;
  int32_t default_max_new_tokens = 256;
};
inline constexpr int kMaxReceiveMessageBytes = 8 << 20;

// Why a request was refused, for moe_router_rejections_total{reason}.
enum class RejectReason { kInvalidArgument, kPromptTooLong };

// A validated request, ready to place.
struct PreparedRequest {
  // The client's request_id (echoed to it), or cluster_id when it sent none.
  std::string request_id;
  // The router's unguessable id: what the attention worker sees and logs.
  std::string cluster_id;
  std::vector<int32_t> prompt;
  moe::v1::AttentionGenerateRequest worker_request;  // carries the prompt too
  std::vector<std::string> stop;
  bool skip_special_tokens = true;
  // The prompt leaves the model inside <think>: output starts as reasoning.
  bool start_in_reasoning = false;
  // The chat input offered tools: <tool_call> blocks in the answer become tool calls.
  bool parse_tool_calls = false;
  int32_t max_new_tokens = 0;
  int32_t logprobs = 0;
};

// Token ids of a chat input with the model's template (field paths under `field`, e.g. "chat").
// Tools must be JSON objects and tool-call arguments JSON text of an object (INVALID_ARGUMENT
// naming e.g. chat.tools[2] or chat.messages[1].tool_calls[0].arguments); both keep their key
// order, since the template prints them.
absl::StatusOr<std::vector<int32_t>> TokenizeChat(const ServedModel& model, const moe::v1::ChatInput& chat,
                                                  const RequestLimits& limits, const std::string& field);
// Token ids of text (no special tokens added); INVALID_ARGUMENT naming `field` for bad UTF-8 or
// text over the limit.
absl::StatusOr<std::vector<int32_t>> TokenizeText(const ServedModel& model, const std::string& text,
                                                  const RequestLimits& limits, const std::string& field);

// Validates `request` against `model` and resolves unset sampling fields from the model's
// generation_config. `generated_id` becomes cluster_id, and request_id when the request has none. On error,
// *reason (if not null) says which rejection it is.
absl::StatusOr<PreparedRequest> PrepareRequest(const moe::v1::GenerateRequest& request,
                                               const ServedModel& model, const RequestLimits& limits,
                                               const std::string& generated_id,
                                               RejectReason* reason = nullptr);

}  // namespace moe::router

#endif  // MOE_SERVICES_ROUTER_REQUEST_VALIDATION_H_
