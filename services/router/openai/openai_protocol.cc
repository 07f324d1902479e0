#include "services/router/openai/openai_protocol.h"

#include <cmath>
#include <limits>
#include <random>
#include <set>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moe::router::openai {
namespace {

using json = nlohmann::json;

std::string Dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string Event(const json& j) {
  return absl::StrCat("data: ", Dump(j), "\n\n");
}

// Field accessors: null means unset; a wrong type is a 400 naming the field.
class Reader {
 public:
  std::optional<ApiError> error;

  bool Fail(const std::string& field, const std::string& message) {
    if (!error) error = BadRequest(field, absl::StrCat(field, ": ", message));
    return false;
  }

  std::optional<double> Number(const json& j, const std::string& field) {
    if (j.is_null()) return std::nullopt;
    if (!j.is_number()) {
      Fail(field, "must be a number");
      return std::nullopt;
    }
    return j.get<double>();
  }
  // An integer in [lo, hi]; an integral float (5.0) counts.
  std::optional<int64_t> Integer(const json& j, const std::string& field,
                                 int64_t lo = std::numeric_limits<int32_t>::min(),
                                 int64_t hi = std::numeric_limits<int32_t>::max()) {
    if (j.is_null()) return std::nullopt;
    int64_t v = 0;
    if (j.is_number_unsigned()) {
      const uint64_t u = j.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        Fail(field, absl::StrCat("must be at most ", hi));
        return std::nullopt;
      }
      v = static_cast<int64_t>(u);
    } else if (j.is_number_integer()) {
      v = j.get<int64_t>();
    } else if (j.is_number_float() && std::isfinite(j.get<double>()) &&
               std::trunc(j.get<double>()) == j.get<double>() && std::fabs(j.get<double>()) < 9e18) {
      v = static_cast<int64_t>(j.get<double>());
    } else {
      Fail(field, "must be an integer");
      return std::nullopt;
    }
    if (v < lo) {
      Fail(field, absl::StrCat("must be at least ", lo));
      return std::nullopt;
    }
    if (v > hi) {
      Fail(field, absl::StrCat("must be at most ", hi));
      return std::nullopt;
    }
    return v;
  }
  std::optional<bool> Bool(const json& j, const std::string& field) {
    if (j.is_null()) return std::nullopt;
    if (!j.is_boolean()) {
      Fail(field, "must be a boolean");
      return std::nullopt;
    }
    return j.get<bool>();
  }
  std::optional<std::string> String(const json& j, const std::string& field) {
    if (j.is_null()) return std::nullopt;
    if (!j.is_string()) {
      Fail(field, "must be a string");
      return std::nullopt;
    }
    return j.get<std::string>();
  }
  bool Object(const json& j, const std::string& field) {
    return j.is_object() || Fail(field, "must be an object");
  }
  bool Array(const json& j, const std::string& field) {
    return j.is_array() || Fail(field, "must be an array");
  }
};

// "content": a string, null, or an array of {"type": "text", "text": ...} parts (joined).
std::string Content(Reader& r, const json& j, const std::string& field) {
  if (j.is_null()) return "";
  if (j.is_string()) return j.get<std::string>();
  if (!j.is_array()) {
    r.Fail(field, "must be a string or an array of text parts");
    return "";
  }
  std::string text;
  for (size_t i = 0; i < j.size(); ++i) {
    const std::string part = absl::StrCat(field, "[", i, "]");
    if (!r.Object(j[i], part)) return "";
    const auto type = r.String(j[i].value("type", json()), part + ".type");
    if (r.error) return "";
    if (type != "text") {
      r.Fail(part + ".type",
             absl::StrCat("only \"text\" content parts are supported, not \"", type.value_or(""), "\""));
      return "";
    }
    const auto t = r.String(j[i].value("text", json()), part + ".text");
    if (!t) {
      if (!r.error) r.Fail(part + ".text", "is required");
      return "";
    }
    text += *t;
  }
  return text;
}

void ParseToolCalls(Reader& r, const json& j, const std::string& field, moe::v1::ChatMessage* message) {
  if (j.is_null() || !r.Array(j, field)) return;
  for (size_t i = 0; i < j.size(); ++i) {
    const std::string f = absl::StrCat(field, "[", i, "]");
    if (!r.Object(j[i], f)) return;
    const auto type = r.String(j[i].value("type", json()), f + ".type");
    if (type.has_value() && *type != "function") {
      r.Fail(f + ".type", "only \"function\" tool calls are supported");
      return;
    }
    moe::v1::ToolCall* call = message->add_tool_calls();
    call->set_id(r.String(j[i].value("id", json()), f + ".id").value_or(""));
    const json& fn = j[i].value("function", json());
    if (!r.Object(fn, f + ".function")) return;
    const auto name = r.String(fn.value("name", json()), f + ".function.name");
    if (!name) {
      if (!r.error) r.Fail(f + ".function.name", "is required");
      return;
    }
    call->set_name(*name);
    const json& args = fn.value("arguments", json());
    if (args.is_string()) {
      call->set_arguments(args.get<std::string>());
    } else if (args.is_object()) {
      call->set_arguments(Dump(args));
    } else if (args.is_null()) {
      call->set_arguments("{}");
    } else {
      r.Fail(f + ".function.arguments", "must be a string (JSON text) or an object");
      return;
    }
  }
}

void ParseMessages(Reader& r, const json& j, moe::v1::ChatInput* chat) {
  if (j.is_null()) {
    r.Fail("messages", "is required");
    return;
  }
  if (!r.Array(j, "messages")) return;
  if (j.empty()) {
    r.Fail("messages", "must not be empty");
    return;
  }
  static const std::set<std::string> kKnown = {"role",      "content",    "name",         "reasoning_content",
                                               "reasoning", "tool_calls", "tool_call_id", "refusal"};
  for (size_t i = 0; i < j.size(); ++i) {
    const std::string f = absl::StrCat("messages[", i, "]");
    if (!r.Object(j[i], f)) return;
    for (const auto& [key, value] : j[i].items()) {
      if (!kKnown.contains(key)) {
        r.Fail(absl::StrCat(f, ".", key), "unknown field");
        return;
      }
    }
    moe::v1::ChatMessage* m = chat->add_messages();
    const auto role = r.String(j[i].value("role", json()), f + ".role");
    if (r.error) return;
    if (!role) {
      r.Fail(f + ".role", "is required");
      return;
    }
    if (*role == "developer") {
      m->set_role("system");  // OpenAI's newer name for the system role
    } else if (*role == "system" || *role == "user" || *role == "assistant" || *role == "tool") {
      m->set_role(*role);
    } else {
      r.Fail(f + ".role", "must be \"system\", \"user\", \"assistant\" or \"tool\"");
      return;
    }
    m->set_content(Content(r, j[i].value("content", json()), f + ".content"));
    r.String(j[i].value("name", json()), f + ".name");  // accepted, not used by Qwen3's template
    for (const char* key : {"reasoning_content", "reasoning"}) {
      if (auto reasoning = r.String(j[i].value(key, json()), absl::StrCat(f, ".", key))) {
        if (*role != "assistant") {
          r.Fail(absl::StrCat(f, ".", key), "only assistant messages have reasoning");
          return;
        }
        m->set_reasoning_content(*reasoning);
      }
    }
    if (j[i].contains("tool_calls") && !j[i]["tool_calls"].is_null() && *role != "assistant") {
      r.Fail(f + ".tool_calls", "only assistant messages have tool calls");
      return;
    }
    ParseToolCalls(r, j[i].value("tool_calls", json()), f + ".tool_calls", m);
    if (auto id = r.String(j[i].value("tool_call_id", json()), f + ".tool_call_id")) m->set_tool_call_id(*id);
    if (r.error) return;
  }
}

void ParseTools(Reader& r, const json& j, moe::v1::ChatInput* chat) {
  if (j.is_null() || !r.Array(j, "tools")) return;
  for (size_t i = 0; i < j.size(); ++i) {
    const std::string f = absl::StrCat("tools[", i, "]");
    if (!r.Object(j[i], f)) return;
    const auto type = r.String(j[i].value("type", json()), f + ".type");
    if (r.error) return;
    if (type != "function") {
      r.Fail(f + ".type", "only \"function\" tools are supported");
      return;
    }
    const json& fn = j[i].value("function", json());
    if (!r.Object(fn, f + ".function")) return;
    const auto name = r.String(fn.value("name", json()), f + ".function.name");
    if (r.error) return;
    if (!name || name->empty()) {
      r.Fail(f + ".function.name", "is required");
      return;
    }
    chat->add_tools(Dump(j[i]));
  }
}

// "prompt": a string, a list of token ids, or a list holding one of either.
void ParsePrompt(Reader& r, const json& j, moe::v1::GenerateRequest* g) {
  if (j.is_null()) {
    r.Fail("prompt", "is required");
    return;
  }
  if (j.is_string()) {
    g->set_text(j.get<std::string>());
    return;
  }
  if (!j.is_array()) {
    r.Fail("prompt", "must be a string, an array of token ids, or an array with one of these");
    return;
  }
  if (j.empty()) {
    r.Fail("prompt", "must not be empty");
    return;
  }
  const json* ids = &j;
  if (!j[0].is_number()) {
    if (j.size() > 1) {
      r.Fail("prompt", "only one prompt per request is supported (send one request per prompt)");
      return;
    }
    if (j[0].is_string()) {
      g->set_text(j[0].get<std::string>());
      return;
    }
    if (!j[0].is_array()) {
      r.Fail("prompt[0]", "must be a string or an array of token ids");
      return;
    }
    ids = &j[0];
  }
  for (size_t i = 0; i < ids->size(); ++i) {
    const auto id = r.Integer((*ids)[i], absl::StrCat("prompt[", i, "]"), 0);
    if (!id) {
      if (!r.error) r.Fail(absl::StrCat("prompt[", i, "]"), "must be a token id");
      return;
    }
    g->mutable_token_ids()->add_ids(static_cast<int32_t>(*id));
  }
}

void ParseStop(Reader& r, const json& j, moe::v1::SamplingParams* s) {
  if (j.is_null()) return;
  if (j.is_string()) {
    s->add_stop(j.get<std::string>());
    return;
  }
  if (!j.is_array()) {
    r.Fail("stop", "must be a string or an array of strings");
    return;
  }
  for (size_t i = 0; i < j.size(); ++i) {
    const auto stop = r.String(j[i], absl::StrCat("stop[", i, "]"));
    if (!stop) {
      if (!r.error) r.Fail(absl::StrCat("stop[", i, "]"), "must be a string");
      return;
    }
    s->add_stop(*stop);
  }
}

const std::set<std::string>& KnownFields(Endpoint endpoint) {
  static const std::set<std::string> kCommon = {"model",
                                                "temperature",
                                                "top_p",
                                                "top_k",
                                                "min_p",
                                                "max_tokens",
                                                "stop",
                                                "seed",
                                                "n",
                                                "logprobs",
                                                "stream",
                                                "stream_options",
                                                "presence_penalty",
                                                "frequency_penalty",
                                                "repetition_penalty",
                                                "min_tokens",
                                                "stop_token_ids",
                                                "ignore_eos",
                                                "skip_special_tokens",
                                                "user"};
  static const std::set<std::string> kChat = [] {
    std::set<std::string> s = kCommon;
    s.insert({"messages", "max_completion_tokens", "top_logprobs", "chat_template_kwargs", "tools",
              "tool_choice", "parallel_tool_calls"});
    return s;
  }();
  static const std::set<std::string> kCompletions = [] {
    std::set<std::string> s = kCommon;
    s.insert("prompt");
    return s;
  }();
  return endpoint == Endpoint::kChatCompletions ? kChat : kCompletions;
}

// Fields of the OpenAI API this server knows but does not implement: a 400 saying so, rather than
// "unknown field".
const std::set<std::string>& UnsupportedFields() {
  static const std::set<std::string> kUnsupported = {"logit_bias",
                                                     "response_format",
                                                     "functions",
                                                     "function_call",
                                                     "audio",
                                                     "modalities",
                                                     "prediction",
                                                     "service_tier",
                                                     "store",
                                                     "metadata",
                                                     "best_of",
                                                     "echo",
                                                     "suffix",
                                                     "guided_json",
                                                     "guided_regex",
                                                     "guided_choice",
                                                     "web_search_options"};
  return kUnsupported;
}

void ParseSampling(Reader& r, const json& body, Endpoint endpoint, ParsedRequest* out) {
  moe::v1::GenerateRequest& g = out->generate;
  moe::v1::SamplingParams* s = g.mutable_sampling();
  auto get = [&body](const char* key) -> const json& {
    static const json kNull;
    auto it = body.find(key);
    return it == body.end() ? kNull : *it;
  };
  if (auto v = r.Number(get("temperature"), "temperature")) s->set_temperature(static_cast<float>(*v));
  if (auto v = r.Number(get("top_p"), "top_p")) s->set_top_p(static_cast<float>(*v));
  if (auto v = r.Integer(get("top_k"), "top_k")) s->set_top_k(static_cast<int32_t>(*v));
  if (auto v = r.Number(get("min_p"), "min_p")) s->set_min_p(static_cast<float>(*v));
  if (auto v = r.Number(get("repetition_penalty"), "repetition_penalty"))
    s->set_repetition_penalty(static_cast<float>(*v));
  if (auto v = r.Number(get("presence_penalty"), "presence_penalty"))
    s->set_presence_penalty(static_cast<float>(*v));
  if (auto v = r.Number(get("frequency_penalty"), "frequency_penalty"))
    s->set_frequency_penalty(static_cast<float>(*v));
  // max_completion_tokens (chat's newer name) wins over the deprecated max_tokens, as in vLLM.
  for (const char* key : {"max_tokens", "max_completion_tokens"}) {
    if (endpoint == Endpoint::kCompletions && std::string_view(key) == "max_completion_tokens") continue;
    if (auto v = r.Integer(get(key), key, 0)) s->set_max_new_tokens(static_cast<int32_t>(*v));
  }
  if (auto v = r.Integer(get("min_tokens"), "min_tokens", 0)) s->set_min_new_tokens(static_cast<int32_t>(*v));
  ParseStop(r, get("stop"), s);
  const json& stop_ids = get("stop_token_ids");
  if (!stop_ids.is_null() && r.Array(stop_ids, "stop_token_ids")) {
    for (size_t i = 0; i < stop_ids.size(); ++i) {
      const auto id = r.Integer(stop_ids[i], absl::StrCat("stop_token_ids[", i, "]"), 0);
      if (!id) {
        if (!r.error) r.Fail(absl::StrCat("stop_token_ids[", i, "]"), "must be a token id");
        break;
      }
      s->add_stop_token_ids(static_cast<int32_t>(*id));
    }
  }
  if (auto v = r.Integer(get("seed"), "seed", std::numeric_limits<int64_t>::min(),
                         std::numeric_limits<int64_t>::max())) {
    out->seed = static_cast<uint64_t>(*v);  // negative seeds wrap, as any 64-bit seed is as good
  }
  if (auto v = r.Bool(get("ignore_eos"), "ignore_eos")) s->set_ignore_eos(*v);
  if (auto v = r.Bool(get("skip_special_tokens"), "skip_special_tokens")) g.set_skip_special_tokens(*v);
  if (auto v = r.Integer(get("n"), "n", 1, kMaxChoices)) out->n = static_cast<int>(*v);
  if (endpoint == Endpoint::kChatCompletions) {
    if (auto v = r.Bool(get("logprobs"), "logprobs")) out->logprobs = *v;
    if (auto v = r.Integer(get("top_logprobs"), "top_logprobs", 0, 20)) {
      if (!out->logprobs) {
        r.Fail("top_logprobs", "needs \"logprobs\": true");
      } else {
        g.set_logprobs(static_cast<int32_t>(*v));
      }
    }
  } else if (auto v = r.Integer(get("logprobs"), "logprobs", 0, 20)) {
    out->logprobs = true;
    g.set_logprobs(static_cast<int32_t>(*v));
  }
  if (auto v = r.Bool(get("stream"), "stream")) out->stream = *v;
  const json& options = get("stream_options");
  if (!options.is_null() && r.Object(options, "stream_options")) {
    for (const auto& [key, value] : options.items()) {
      if (key != "include_usage" && key != "continuous_usage_stats") {
        r.Fail(absl::StrCat("stream_options.", key), "unknown field");
        return;
      }
    }
    if (auto v = r.Bool(options.value("include_usage", json()), "stream_options.include_usage")) {
      out->include_usage = *v;
    }
  }
  if (auto model = r.String(get("model"), "model")) {
    out->model = *model;
    g.set_model(*model);
  }
  r.String(get("user"), "user");
}

}  // namespace

ApiError BadRequest(std::string param, std::string message) {
  return ApiError{.http_status = 400,
                  .message = std::move(message),
                  .type = "invalid_request_error",
                  .param = std::move(param),
                  .code = ""};
}

std::string RenderError(const ApiError& error) {
  json e = {{"message", error.message},
            {"type", error.type},
            {"param", error.param.empty() ? json() : json(error.param)},
            {"code", error.code.empty() ? json() : json(error.code)}};
  return Dump(json{{"error", e}});
}

ApiError FromGrpcStatus(const grpc::Status& status) {
  ApiError e;
  e.message = status.error_message();
  switch (status.error_code()) {
    case grpc::StatusCode::INVALID_ARGUMENT:
      e.http_status = 400;
      e.type = "invalid_request_error";
      // The router's messages start with the field they name ("sampling.top_p: ..."); the code says
      // which kind of error, the message says the rest.
      e.code = "invalid_argument";
      break;
    case grpc::StatusCode::UNAUTHENTICATED:
      e.http_status = 401;
      e.type = "authentication_error";
      e.code = "invalid_api_key";
      break;
    case grpc::StatusCode::PERMISSION_DENIED:
      e.http_status = 403;
      e.type = "permission_error";
      break;
    case grpc::StatusCode::NOT_FOUND:
      e.http_status = 404;
      e.type = "not_found_error";
      break;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      e.http_status = 429;
      e.type = "rate_limit_error";
      break;
    case grpc::StatusCode::UNAVAILABLE:
      e.http_status = 503;
      e.type = "service_unavailable_error";
      break;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      e.http_status = 504;
      e.type = "timeout_error";
      break;
    default:
      e.http_status = 500;
      e.type = "server_error";
      break;
  }
  if (e.message.empty()) e.message = absl::StrCat("request failed (gRPC code ", status.error_code(), ")");
  return e;
}

std::optional<ApiError> ParseRequest(Endpoint endpoint, std::string_view body, ParsedRequest* out) {
  *out = ParsedRequest{};
  out->endpoint = endpoint;
  // Values nested deeper than kMaxJsonDepth are discarded while parsing (so a body of a million
  // '[' costs no memory) and refused: serializing them again (tools) would recurse that deep.
  bool too_deep = false;
  json j = json::parse(
      body.begin(), body.end(),
      [&too_deep](int depth, json::parse_event_t, json&) {
        if (depth <= kMaxJsonDepth) return true;
        too_deep = true;
        return false;
      },
      /*allow_exceptions=*/false);
  if (j.is_discarded()) return BadRequest("", "the request body is not valid JSON");
  if (too_deep) {
    return BadRequest("", absl::StrCat("the request body nests JSON deeper than ", kMaxJsonDepth, " levels"));
  }
  if (!j.is_object()) return BadRequest("", "the request body must be a JSON object");
  const std::set<std::string>& known = KnownFields(endpoint);
  for (const auto& [key, value] : j.items()) {
    if (UnsupportedFields().contains(key)) return BadRequest(key, absl::StrCat(key, ": is not supported"));
    if (!known.contains(key)) return BadRequest(key, absl::StrCat(key, ": unknown field"));
  }
  Reader r;
  ParseSampling(r, j, endpoint, out);
  if (r.error) return r.error;
  if (endpoint == Endpoint::kCompletions) {
    ParsePrompt(r, j.value("prompt", json()), &out->generate);
    return r.error;
  }
  moe::v1::ChatInput* chat = out->generate.mutable_chat();
  ParseMessages(r, j.value("messages", json()), chat);
  if (r.error) return r.error;
  const json& kwargs = j.value("chat_template_kwargs", json());
  if (!kwargs.is_null() && r.Object(kwargs, "chat_template_kwargs")) {
    for (const auto& [key, value] : kwargs.items()) {
      if (key != "enable_thinking") {
        r.Fail(absl::StrCat("chat_template_kwargs.", key),
               "unknown field (only enable_thinking is supported)");
        return r.error;
      }
    }
    if (auto v = r.Bool(kwargs.value("enable_thinking", json()), "chat_template_kwargs.enable_thinking")) {
      chat->set_enable_thinking(*v);
    }
  }
  if (r.error) return r.error;
  bool tools_on = true;
  const json& choice = j.value("tool_choice", json());
  if (!choice.is_null()) {
    if (!choice.is_string()) {
      return BadRequest("tool_choice", "tool_choice: only \"auto\" and \"none\" are supported");
    }
    const std::string c = choice.get<std::string>();
    if (c == "none") {
      tools_on = false;
    } else if (c != "auto") {
      return BadRequest("tool_choice", "tool_choice: only \"auto\" and \"none\" are supported");
    }
  }
  r.Bool(j.value("parallel_tool_calls", json()), "parallel_tool_calls");
  ParseTools(r, j.value("tools", json()), chat);
  // tool_choice "none": the model sees no tools, so it makes no calls (and none are parsed).
  if (!tools_on) chat->clear_tools();
  return r.error;
}

moe::v1::GenerateRequest ForChoice(const ParsedRequest& request, uint64_t base_seed, int index) {
  moe::v1::GenerateRequest g = request.generate;
  g.mutable_sampling()->set_seed(base_seed + static_cast<uint64_t>(index));
  return g;
}

void ChoiceResult::Add(const moe::v1::GenerateResponse& message) {
  text += message.text();
  reasoning += message.reasoning_text();
  tool_calls.insert(tool_calls.end(), message.tool_calls().begin(), message.tool_calls().end());
  tokens.insert(tokens.end(), message.tokens().begin(), message.tokens().end());
  if (message.finished()) {
    finish_reason = message.finish_reason();
    prompt_tokens = message.usage().prompt_tokens();
    completion_tokens = message.usage().completion_tokens();
  }
}

json FinishReason(moe::v1::FinishReason reason, bool has_tool_calls) {
  switch (reason) {
    case moe::v1::FINISH_REASON_STOP:
    case moe::v1::FINISH_REASON_STOP_SEQUENCE:
      return has_tool_calls ? "tool_calls" : "stop";
    case moe::v1::FINISH_REASON_LENGTH:
      return "length";
    case moe::v1::FINISH_REASON_ABORT:
    case moe::v1::FINISH_REASON_ERROR:
      return "abort";
    default:
      return json();
  }
}

namespace {

json Bytes(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(static_cast<int>(c));
  return b;
}

json ToolCallJson(const moe::v1::ToolCall& call) {
  return {{"id", call.id()},
          {"type", "function"},
          {"function", {{"name", call.name()}, {"arguments", call.arguments()}}}};
}

json Usage(int prompt_tokens, int completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

// Completions without the chat split: the thinking text comes first, as the model wrote it.
std::string CompletionText(const std::string& reasoning, const std::string& text) {
  return reasoning + text;
}

}  // namespace

json RenderLogprobs(Endpoint endpoint, const std::vector<moe::v1::GeneratedToken>& tokens,
                    const TokenText& token_text, size_t text_offset_base) {
  if (endpoint == Endpoint::kChatCompletions) {
    json content = json::array();
    for (const moe::v1::GeneratedToken& t : tokens) {
      const std::string token = token_text(t.token_id());
      json top = json::array();
      for (const moe::v1::TokenLogprob& p : t.top_logprobs()) {
        top.push_back({{"token", p.token()}, {"logprob", p.logprob()}, {"bytes", Bytes(p.token())}});
      }
      content.push_back(
          {{"token", token}, {"logprob", t.logprob()}, {"bytes", Bytes(token)}, {"top_logprobs", top}});
    }
    return {{"content", content}};
  }
  json tokens_json = json::array(), logprobs = json::array(), top = json::array(), offsets = json::array();
  size_t offset = text_offset_base;
  for (const moe::v1::GeneratedToken& t : tokens) {
    const std::string token = token_text(t.token_id());
    tokens_json.push_back(token);
    logprobs.push_back(t.logprob());
    json alternatives = json::object();
    for (const moe::v1::TokenLogprob& p : t.top_logprobs()) alternatives[p.token()] = p.logprob();
    top.push_back(alternatives);
    offsets.push_back(offset);
    offset += token.size();
  }
  return {
      {"tokens", tokens_json}, {"token_logprobs", logprobs}, {"top_logprobs", top}, {"text_offset", offsets}};
}

std::string RenderResponse(const ParsedRequest& request, const std::vector<ChoiceResult>& choices,
                           const std::string& id, int64_t created, const std::string& model,
                           const TokenText& token_text) {
  const bool chat = request.endpoint == Endpoint::kChatCompletions;
  json out = {{"id", id},
              {"object", chat ? "chat.completion" : "text_completion"},
              {"created", created},
              {"model", model}};
  json list = json::array();
  int prompt_tokens = 0, completion_tokens = 0;
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceResult& c = choices[i];
    prompt_tokens = c.prompt_tokens;
    completion_tokens += c.completion_tokens;
    const bool has_calls = !c.tool_calls.empty();
    json choice = {{"index", i}};
    if (chat) {
      json message = {{"role", "assistant"}};
      message["content"] = has_calls && c.text.empty() ? json() : json(c.text);
      if (!c.reasoning.empty()) message["reasoning_content"] = c.reasoning;
      if (has_calls) {
        json calls = json::array();
        for (const moe::v1::ToolCall& call : c.tool_calls) calls.push_back(ToolCallJson(call));
        message["tool_calls"] = calls;
      }
      choice["message"] = message;
    } else {
      choice["text"] = CompletionText(c.reasoning, c.text);
    }
    choice["logprobs"] = request.logprobs ? RenderLogprobs(request.endpoint, c.tokens, token_text) : json();
    choice["finish_reason"] = FinishReason(c.finish_reason, has_calls);
    list.push_back(choice);
  }
  out["choices"] = list;
  out["usage"] = Usage(prompt_tokens, completion_tokens);
  return Dump(out);
}

namespace {

json ChunkBase(const StreamContext& context) {
  const bool chat = context.request->endpoint == Endpoint::kChatCompletions;
  json out = {{"id", context.id},
              {"object", chat ? "chat.completion.chunk" : "text_completion"},
              {"created", context.created},
              {"model", context.model}};
  if (context.request->include_usage) out["usage"] = json();
  return out;
}

}  // namespace

std::string RenderRoleChunk(const StreamContext& context, int index) {
  json out = ChunkBase(context);
  out["choices"] = json::array({{{"index", index},
                                 {"delta", {{"role", "assistant"}, {"content", ""}}},
                                 {"logprobs", json()},
                                 {"finish_reason", json()}}});
  return Event(out);
}

std::string RenderChunk(const StreamContext& context, int index, const moe::v1::GenerateResponse& message,
                        int num_tool_calls_before, bool any_tool_calls, size_t text_sent) {
  const ParsedRequest& request = *context.request;
  const bool chat = request.endpoint == Endpoint::kChatCompletions;
  const bool has_content =
      !message.text().empty() || !message.reasoning_text().empty() || message.tool_calls_size() > 0;
  if (!has_content && !message.finished() && !(request.logprobs && message.tokens_size() > 0)) return "";
  json choice = {{"index", index}};
  if (chat) {
    json delta = json::object();
    if (!message.reasoning_text().empty()) delta["reasoning_content"] = message.reasoning_text();
    if (!message.text().empty()) delta["content"] = message.text();
    if (message.tool_calls_size() > 0) {
      json calls = json::array();
      for (int i = 0; i < message.tool_calls_size(); ++i) {
        json call = ToolCallJson(message.tool_calls(i));
        call["index"] = num_tool_calls_before + i;
        calls.push_back(call);
      }
      delta["tool_calls"] = calls;
    }
    choice["delta"] = delta;
  } else {
    choice["text"] = CompletionText(message.reasoning_text(), message.text());
  }
  if (request.logprobs && message.tokens_size() > 0) {
    choice["logprobs"] = RenderLogprobs(request.endpoint, {message.tokens().begin(), message.tokens().end()},
                                        context.token_text, text_sent);
  } else {
    choice["logprobs"] = json();
  }
  choice["finish_reason"] = message.finished() ? FinishReason(message.finish_reason(),
                                                              any_tool_calls || message.tool_calls_size() > 0)
                                               : json();
  json out = ChunkBase(context);
  out["choices"] = json::array({choice});
  return Event(out);
}

std::string RenderUsageChunk(const StreamContext& context, int prompt_tokens, int completion_tokens) {
  json out = ChunkBase(context);
  out["choices"] = json::array();
  out["usage"] = Usage(prompt_tokens, completion_tokens);
  return Event(out);
}

std::string RenderModels(const moe::v1::ModelInfo& info, int64_t created) {
  json model = {{"id", info.model()},
                {"object", "model"},
                {"created", created},
                {"owned_by", "moe"},
                {"max_model_len", info.max_context_length()}};
  return Dump(json{{"object", "list"}, {"data", json::array({model})}});
}

std::string NewResponseId(Endpoint endpoint) {
  absl::BitGen gen;
  const uint64_t a = absl::Uniform<uint64_t>(gen), b = absl::Uniform<uint64_t>(gen);
  return absl::StrCat(endpoint == Endpoint::kChatCompletions ? "chatcmpl-" : "cmpl-",
                      absl::StrFormat("%016x%08x", a, static_cast<uint32_t>(b)));
}

uint64_t RandomSeed() {
  absl::BitGen gen;
  return absl::Uniform<uint64_t>(gen);
}

}  // namespace moe::router::openai
