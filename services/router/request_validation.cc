#include "services/router/request_validation.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/request/sampling_params.h"
#include "common/status/status_macros.h"
#include "common/tokenizer/utf8.h"
#include "nlohmann/json.hpp"
#include "services/router/tool_call_parser.h"

namespace moe::router {
namespace {

absl::Status Invalid(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

absl::Status CheckText(const std::string& field, const std::string& text, const RequestLimits& limits) {
  if (text.size() > limits.max_input_bytes) {
    return Invalid(field,
                   absl::StrCat("is ", text.size(), " bytes, over the limit of ", limits.max_input_bytes));
  }
  if (!tokenizer::ValidateUtf8(text).ok()) return Invalid(field, "is not valid UTF-8");
  return absl::OkStatus();
}

absl::Status CheckIds(const std::string& field, const google::protobuf::RepeatedField<int32_t>& ids,
                      int64_t vocab_size) {
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size) {
      return Invalid(absl::StrCat(field, "[", i, "]"),
                     absl::StrCat("token id ", ids[i], " is out of range [0, ", vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

// JSON text that must be one object (a tool schema, tool-call arguments), parsed keeping key order
// (the chat template prints it back).
absl::StatusOr<nlohmann::ordered_json> ParseJsonObject(const std::string& text, const std::string& field) {
  if (!JsonNestingWithin(text, kMaxToolJsonDepth)) {
    return Invalid(field, absl::StrCat("nests deeper than ", kMaxToolJsonDepth, " levels"));
  }
  nlohmann::ordered_json value = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) return Invalid(field, "is not valid JSON");
  if (!value.is_object()) return Invalid(field, "is not a JSON object");
  return value;
}

// The sampler's messages start with the field name; prefix the request path.
absl::Status SamplingError(const absl::Status& status) {
  return absl::InvalidArgumentError(absl::StrCat("sampling.", status.message()));
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> TokenizeText(const ServedModel& model, const std::string& text,
                                                  const RequestLimits& limits, const std::string& field) {
  if (text.empty()) return Invalid(field, "is empty");
  RETURN_IF_ERROR(CheckText(field, text, limits));
  absl::StatusOr<std::vector<int32_t>> ids = model.tokenizer->Encode(text);
  if (!ids.ok()) return Invalid(field, std::string(ids.status().message()));
  return ids;
}

absl::StatusOr<std::vector<int32_t>> TokenizeChat(const ServedModel& model, const moe::v1::ChatInput& chat,
                                                  const RequestLimits& limits, const std::string& field) {
  if (chat.messages().empty()) return Invalid(field + ".messages", "is empty");
  std::vector<tokenizer::ChatMessage> messages;
  size_t total_bytes = 0;
  for (int i = 0; i < chat.messages_size(); ++i) {
    const moe::v1::ChatMessage& m = chat.messages(i);
    const std::string path = absl::StrCat(field, ".messages[", i, "]");
    if (m.role() != "system" && m.role() != "user" && m.role() != "assistant" && m.role() != "tool") {
      RETURN_IF_ERROR(CheckText(path + ".role", m.role(), limits));
      return Invalid(path + ".role",
                     absl::StrCat("unknown role '", m.role(), "' (system, user, assistant or tool)"));
    }
    RETURN_IF_ERROR(CheckText(path + ".content", m.content(), limits));
    total_bytes += m.content().size();
    tokenizer::ChatMessage out{.role = m.role(), .content = m.content()};
    if (m.has_reasoning_content()) {
      RETURN_IF_ERROR(CheckText(path + ".reasoning_content", m.reasoning_content(), limits));
      total_bytes += m.reasoning_content().size();
      out.reasoning_content = m.reasoning_content();
    }
    // Informational (the template pairs tool results with calls by position), but bounded.
    RETURN_IF_ERROR(CheckText(path + ".tool_call_id", m.tool_call_id(), limits));
    total_bytes += m.tool_call_id().size();
    if (m.tool_calls_size() > 0 && m.role() != "assistant") {
      return Invalid(path + ".tool_calls",
                     absl::StrCat("only assistant messages make tool calls (role is '", m.role(), "')"));
    }
    if (static_cast<size_t>(m.tool_calls_size()) > limits.max_tool_calls_per_message) {
      return Invalid(path + ".tool_calls", absl::StrCat("has ", m.tool_calls_size(), " calls; at most ",
                                                        limits.max_tool_calls_per_message));
    }
    for (int j = 0; j < m.tool_calls_size(); ++j) {
      const moe::v1::ToolCall& call = m.tool_calls(j);
      const std::string call_path = absl::StrCat(path, ".tool_calls[", j, "]");
      RETURN_IF_ERROR(CheckText(call_path + ".id", call.id(), limits));
      RETURN_IF_ERROR(CheckText(call_path + ".name", call.name(), limits));
      if (call.name().empty()) return Invalid(call_path + ".name", "is empty");
      RETURN_IF_ERROR(CheckText(call_path + ".arguments", call.arguments(), limits));
      total_bytes += call.id().size() + call.name().size() + call.arguments().size();
      ASSIGN_OR_RETURN(nlohmann::ordered_json arguments,
                       ParseJsonObject(call.arguments(), call_path + ".arguments"));
      out.tool_calls.push_back({.name = call.name(), .arguments = std::move(arguments)});
    }
    messages.push_back(std::move(out));
  }
  tokenizer::ChatTemplateOptions options;
  if (static_cast<size_t>(chat.tools_size()) > limits.max_tools) {
    return Invalid(field + ".tools",
                   absl::StrCat("has ", chat.tools_size(), " tools; at most ", limits.max_tools));
  }
  for (int i = 0; i < chat.tools_size(); ++i) {
    const std::string path = absl::StrCat(field, ".tools[", i, "]");
    RETURN_IF_ERROR(CheckText(path, chat.tools(i), limits));
    total_bytes += chat.tools(i).size();
    ASSIGN_OR_RETURN(nlohmann::ordered_json tool, ParseJsonObject(chat.tools(i), path));
    options.tools.push_back(std::move(tool));
  }
  if (total_bytes > limits.max_input_bytes) {
    return Invalid(field, absl::StrCat("messages and tools total ", total_bytes, " bytes, over the limit of ",
                                       limits.max_input_bytes));
  }
  options.add_generation_prompt = chat.has_add_generation_prompt() ? chat.add_generation_prompt() : true;
  if (chat.has_enable_thinking()) options.enable_thinking = chat.enable_thinking();
  absl::StatusOr<std::string> rendered = tokenizer::RenderChat(model.chat_flavor, messages, options);
  if (!rendered.ok()) return Invalid(field, std::string(rendered.status().message()));
  absl::StatusOr<std::vector<int32_t>> ids = model.tokenizer->Encode(*rendered);
  if (!ids.ok()) return Invalid(field, std::string(ids.status().message()));
  return ids;
}

absl::StatusOr<PreparedRequest> PrepareRequest(const moe::v1::GenerateRequest& request,
                                               const ServedModel& model, const RequestLimits& limits,
                                               const std::string& generated_id, RejectReason* reason) {
  RejectReason unused;
  if (reason == nullptr) reason = &unused;
  *reason = RejectReason::kInvalidArgument;
  PreparedRequest out;

  if (request.request_id().size() > 256) return Invalid("request_id", "is longer than 256 bytes");
  RETURN_IF_ERROR(CheckText("request_id", request.request_id(), limits));
  out.request_id = request.request_id().empty() ? generated_id : request.request_id();
  out.cluster_id = generated_id;
  if (!request.model().empty() && request.model() != model.name) {
    // Echoed in the error below, so bounded like request_id.
    if (request.model().size() > 256) return Invalid("model", "is longer than 256 bytes");
    RETURN_IF_ERROR(CheckText("model", request.model(), limits));
    return Invalid("model",
                   absl::StrCat("unknown model '", request.model(), "' (serving '", model.name, "')"));
  }

  // Input.
  switch (request.input_case()) {
    case moe::v1::GenerateRequest::kText: {
      ASSIGN_OR_RETURN(out.prompt, TokenizeText(model, request.text(), limits, "text"));
      break;
    }
    case moe::v1::GenerateRequest::kTokenIds: {
      if (request.token_ids().ids().empty()) return Invalid("token_ids.ids", "is empty");
      RETURN_IF_ERROR(CheckIds("token_ids.ids", request.token_ids().ids(), model.config.vocab_size));
      out.prompt.assign(request.token_ids().ids().begin(), request.token_ids().ids().end());
      break;
    }
    case moe::v1::GenerateRequest::kChat: {
      ASSIGN_OR_RETURN(out.prompt, TokenizeChat(model, request.chat(), limits, "chat"));
      break;
    }
    case moe::v1::GenerateRequest::INPUT_NOT_SET:
      return Invalid("input", "no input: set one of text, token_ids or chat");
  }
  const int64_t context = model.config.max_position_embeddings;
  const int64_t prompt_len = static_cast<int64_t>(out.prompt.size());
  if (prompt_len >= context) {
    *reason = RejectReason::kPromptTooLong;
    return Invalid("prompt", absl::StrCat("the prompt has ", prompt_len, " tokens; the context length is ",
                                          context, " (at least one token must be left to generate)"));
  }
  const int64_t context_left = context - prompt_len;

  // Sampling.
  const moe::v1::SamplingParams& s = request.sampling();
  moe::request::SamplingOverrides overrides;
  if (s.has_temperature()) overrides.temperature = s.temperature();
  if (s.has_top_p()) overrides.top_p = s.top_p();
  if (s.has_top_k()) overrides.top_k = s.top_k();
  if (s.has_min_p()) overrides.min_p = s.min_p();
  if (s.has_repetition_penalty()) overrides.repetition_penalty = s.repetition_penalty();
  if (s.has_presence_penalty()) overrides.presence_penalty = s.presence_penalty();
  if (s.has_frequency_penalty()) overrides.frequency_penalty = s.frequency_penalty();
  if (s.has_seed()) overrides.seed = s.seed();
  absl::StatusOr<moe::request::SamplingParams> params =
      moe::request::ResolveSamplingParams(overrides, model.generation);
  if (!params.ok()) return SamplingError(params.status());

  if (s.has_max_new_tokens()) {
    if (s.max_new_tokens() <= 0) {
      return Invalid("sampling.max_new_tokens", absl::StrCat("must be >= 1, got ", s.max_new_tokens()));
    }
    if (s.max_new_tokens() > context_left) {
      return Invalid("sampling.max_new_tokens",
                     absl::StrCat(s.max_new_tokens(), " is over the context left after the prompt (",
                                  context_left, " = ", context, " - ", prompt_len, " prompt tokens)"));
    }
    out.max_new_tokens = s.max_new_tokens();
  } else {
    // Unset: the model's default, cut to what the context leaves (not an error: nobody asked).
    const int64_t wanted = model.generation.max_new_tokens.value_or(limits.default_max_new_tokens);
    out.max_new_tokens = static_cast<int32_t>(std::max<int64_t>(1, std::min(wanted, context_left)));
  }
  const int32_t min_new = s.has_min_new_tokens() ? s.min_new_tokens() : 0;
  if (min_new < 0 || min_new > out.max_new_tokens) {
    return Invalid("sampling.min_new_tokens",
                   absl::StrCat("must be in [0, max_new_tokens = ", out.max_new_tokens, "], got ", min_new));
  }
  if (static_cast<size_t>(s.stop_size()) > limits.max_stop_strings) {
    return Invalid("sampling.stop",
                   absl::StrCat("has ", s.stop_size(), " strings; at most ", limits.max_stop_strings));
  }
  for (int i = 0; i < s.stop_size(); ++i) {
    const std::string field = absl::StrCat("sampling.stop[", i, "]");
    if (s.stop(i).empty()) return Invalid(field, "is empty");
    if (s.stop(i).size() > limits.max_stop_bytes) {
      return Invalid(field, absl::StrCat("is longer than ", limits.max_stop_bytes, " bytes"));
    }
    if (!tokenizer::ValidateUtf8(s.stop(i)).ok()) return Invalid(field, "is not valid UTF-8");
    out.stop.push_back(s.stop(i));
  }
  if (static_cast<size_t>(s.stop_token_ids_size()) > limits.max_stop_token_ids) {
    return Invalid("sampling.stop_token_ids", absl::StrCat("has ", s.stop_token_ids_size(), " ids; at most ",
                                                           limits.max_stop_token_ids));
  }
  RETURN_IF_ERROR(CheckIds("sampling.stop_token_ids", s.stop_token_ids(), model.config.vocab_size));
  if (request.logprobs() < 0 || request.logprobs() > limits.max_logprobs) {
    return Invalid("logprobs",
                   absl::StrCat("must be in [0, ", limits.max_logprobs, "], got ", request.logprobs()));
  }
  out.logprobs = request.logprobs();
  out.skip_special_tokens = request.has_skip_special_tokens() ? request.skip_special_tokens() : true;
  out.start_in_reasoning = model.think.PromptOpensThinking(out.prompt);
  out.parse_tool_calls =
      request.input_case() == moe::v1::GenerateRequest::kChat && request.chat().tools_size() > 0;

  moe::v1::AttentionGenerateRequest& w = out.worker_request;
  // Workers see the router's own id, never the client's (a label only the client sees).
  w.set_request_id(out.cluster_id);
  w.mutable_prompt()->Add(out.prompt.begin(), out.prompt.end());
  moe::v1::AttentionSampling* ws = w.mutable_sampling();
  ws->set_temperature(static_cast<float>(params->temperature));
  ws->set_top_p(static_cast<float>(params->top_p));
  ws->set_top_k(static_cast<int32_t>(params->top_k));
  ws->set_min_p(static_cast<float>(params->min_p));
  ws->set_repetition_penalty(static_cast<float>(params->repetition_penalty));
  ws->set_presence_penalty(static_cast<float>(params->presence_penalty));
  ws->set_frequency_penalty(static_cast<float>(params->frequency_penalty));
  ws->set_seed(params->seed);
  w.set_max_new_tokens(out.max_new_tokens);
  w.set_min_new_tokens(min_new);
  *w.mutable_stop_token_ids() = s.stop_token_ids();
  w.set_ignore_eos(s.ignore_eos());
  w.set_top_logprobs(out.logprobs);
  return out;
}

}  // namespace moe::router
