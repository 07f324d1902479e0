// The OpenAI-compatible HTTP API's JSON <-> moe.v1 mapping (docs/http-api.md), pure functions with no
// server: request bodies of /v1/chat/completions and /v1/completions become moe.v1.GenerateRequest
// templates, GenerateResponse streams become chat.completion(.chunk) / text_completion objects, and
// gRPC statuses become OpenAI-style error objects. Fields are mapped the way vLLM maps them.
//
// Thread-safe: no state.
#ifndef MOE_SERVICES_ROUTER_OPENAI_OPENAI_PROTOCOL_H_
#define MOE_SERVICES_ROUTER_OPENAI_OPENAI_PROTOCOL_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "grpcpp/support/status.h"
#include "moe/v1/generate.pb.h"
#include "nlohmann/json.hpp"

namespace moe::router::openai {

// The largest `n` (choices per request): each choice is one Generate call.
inline constexpr int kMaxChoices = 16;
// The deepest JSON nesting a request may have (tool parameter schemas included).
inline constexpr int kMaxJsonDepth = 64;

// An error as the API returns it: the HTTP status and the body
// {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int http_status = 400;
  std::string message;
  // "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
  // "rate_limit_error", "server_error", "service_unavailable_error", "timeout_error".
  std::string type = "invalid_request_error";
  // The request field at fault (empty: none).
  std::string param;
  // A machine-readable code (empty: null).
  std::string code;
};

// 400 invalid_request_error naming `param`.
ApiError BadRequest(std::string param, std::string message);
// {"error": {...}} with null for an empty param or code.
std::string RenderError(const ApiError& error);
// The mapping of gRPC codes to HTTP statuses (INVALID_ARGUMENT 400, UNAUTHENTICATED 401,
// PERMISSION_DENIED 403, NOT_FOUND 404, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503,
// DEADLINE_EXCEEDED 504, everything else 500); the message is the status's (the router's messages
// are public-safe).
ApiError FromGrpcStatus(const grpc::Status& status);

enum class Endpoint { kChatCompletions, kCompletions };

// A request, parsed and validated as far as its JSON shape goes; the router's Generate validates the
// values (ranges, lengths) and its INVALID_ARGUMENT comes back as 400.
struct ParsedRequest {
  Endpoint endpoint = Endpoint::kChatCompletions;
  // The Generate request of choice 0; choice i is this with seed + i (ForChoice).
  moe::v1::GenerateRequest generate;
  // The request's seed, if it set one; unset: the caller draws a fresh random one per request.
  std::optional<uint64_t> seed;
  int n = 1;
  bool stream = false;
  bool include_usage = false;
  // Chat: `logprobs: true`; completions: `logprobs` set (then generate.logprobs() is the top count).
  bool logprobs = false;
  // The model name as the client wrote it ("" when absent): echoed in responses.
  std::string model;
};

// Parses a /v1/chat/completions or /v1/completions body. Every field the API documents
// (docs/http-api.md) is mapped; an unknown top-level field, a field of the wrong type, a negative
// max_tokens, an unsupported feature (tool_choice other than "auto"/"none", non-text content parts,
// several prompts) is a 400 naming the field in `param`. Fills *out and returns nullopt on success.
std::optional<ApiError> ParseRequest(Endpoint endpoint, std::string_view body, ParsedRequest* out);

// choice i's Generate request: the template with seed = base_seed + i (wrapping).
moe::v1::GenerateRequest ForChoice(const ParsedRequest& request, uint64_t base_seed, int index);

// A token id's text (for logprobs): the server passes the served model's tokenizer.
using TokenText = std::function<std::string(int32_t)>;

// What one choice produced, accumulated over its GenerateResponse messages.
struct ChoiceResult {
  std::string text;
  std::string reasoning;
  std::vector<moe::v1::ToolCall> tool_calls;
  std::vector<moe::v1::GeneratedToken> tokens;
  moe::v1::FinishReason finish_reason = moe::v1::FINISH_REASON_UNSPECIFIED;
  int prompt_tokens = 0;
  int completion_tokens = 0;
  // Adds one message of the stream.
  void Add(const moe::v1::GenerateResponse& message);
};

// OpenAI's finish_reason: "stop" (EOS, stop token, stop string), "length", "tool_calls" (it stopped
// and produced a tool call), "abort"; null while unfinished.
nlohmann::json FinishReason(moe::v1::FinishReason reason, bool has_tool_calls);

// The "logprobs" object of a choice: chat {"content": [{token, logprob, bytes, top_logprobs}]},
// completions {tokens, token_logprobs, top_logprobs, text_offset}. `text_offset_base`: completions'
// offset of the first token (the length of text already sent for this choice).
nlohmann::json RenderLogprobs(Endpoint endpoint, const std::vector<moe::v1::GeneratedToken>& tokens,
                              const TokenText& token_text, size_t text_offset_base = 0);

// The whole non-streaming response: chat.completion or text_completion with one choice per result
// (index = position) and usage summed over them (prompt tokens counted once, as OpenAI does).
std::string RenderResponse(const ParsedRequest& request, const std::vector<ChoiceResult>& choices,
                           const std::string& id, int64_t created, const std::string& model,
                           const TokenText& token_text);

// Streaming. Each function returns one SSE event, "data: {json}\n\n".
struct StreamContext {
  const ParsedRequest* request = nullptr;
  std::string id;
  int64_t created = 0;
  std::string model;
  TokenText token_text;
};
// Chat only: the first chunk of a choice, delta {"role": "assistant", "content": ""}.
std::string RenderRoleChunk(const StreamContext& context, int index);
// The chunk for one GenerateResponse of choice `index` (text, reasoning_content, tool call deltas
// numbered from `num_tool_calls_before`, logprobs, and finish_reason on the last message); empty when
// the message carries nothing to send (no text, no tool call, not finished).
std::string RenderChunk(const StreamContext& context, int index, const moe::v1::GenerateResponse& message,
                        int num_tool_calls_before, bool any_tool_calls, size_t text_sent);
// The include_usage chunk: empty choices and the usage.
std::string RenderUsageChunk(const StreamContext& context, int prompt_tokens, int completion_tokens);
inline constexpr std::string_view kDoneEvent = "data: [DONE]\n\n";

// GET /v1/models from the model info.
std::string RenderModels(const moe::v1::ModelInfo& info, int64_t created);

// "chatcmpl-<24 random hex>" / "cmpl-<...>".
std::string NewResponseId(Endpoint endpoint);
// A fresh random seed (vLLM: an unseeded request is random).
uint64_t RandomSeed();

}  // namespace moe::router::openai

#endif  // MOE_SERVICES_ROUTER_OPENAI_OPENAI_PROTOCOL_H_
