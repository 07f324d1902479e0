// The OpenAI JSON <-> moe.v1 mapping, without a server.
#include "services/router/openai/openai_protocol.h"

#include <string>

#include "gtest/gtest.h"

namespace moe::router::openai {
namespace {

using json = nlohmann::json;

ParsedRequest Parse(Endpoint endpoint, const std::string& body) {
  ParsedRequest out;
  std::optional<ApiError> error = ParseRequest(endpoint, body, &out);
  EXPECT_FALSE(error.has_value()) << (error ? error->message : "");
  return out;
}
ParsedRequest Chat(const std::string& body) {
  return Parse(Endpoint::kChatCompletions, body);
}

ApiError Error(Endpoint endpoint, const std::string& body) {
  ParsedRequest out;
  std::optional<ApiError> error = ParseRequest(endpoint, body, &out);
  EXPECT_TRUE(error.has_value()) << body;
  return error.value_or(ApiError{});
}
ApiError ChatError(const std::string& body) {
  return Error(Endpoint::kChatCompletions, body);
}

std::string WithHi(const std::string& fields) {
  return R"({"messages": [{"role": "user", "content": "hi"}])" + (fields.empty() ? "" : ", " + fields) + "}";
}

TEST(OpenAiProtocolTest, ChatMapsEverySamplingField) {
  ParsedRequest r = Chat(WithHi(
      R"("model": "tiny", "temperature": 0.5, "top_p": 0.9, "top_k": 20, "min_p": 0.05,
         "max_tokens": 7, "stop": ["a", "b"], "seed": 42, "n": 3, "logprobs": true, "top_logprobs": 2,
         "presence_penalty": 0.25, "frequency_penalty": -0.5, "repetition_penalty": 1.1, "min_tokens": 2,
         "stop_token_ids": [5, 6], "ignore_eos": true, "skip_special_tokens": false, "stream": true,
         "stream_options": {"include_usage": true}, "user": "u1",
         "chat_template_kwargs": {"enable_thinking": false})"));
  const moe::v1::SamplingParams& s = r.generate.sampling();
  EXPECT_EQ(r.generate.model(), "tiny");
  EXPECT_EQ(r.model, "tiny");
  EXPECT_FLOAT_EQ(s.temperature(), 0.5f);
  EXPECT_FLOAT_EQ(s.top_p(), 0.9f);
  EXPECT_EQ(s.top_k(), 20);
  EXPECT_FLOAT_EQ(s.min_p(), 0.05f);
  EXPECT_EQ(s.max_new_tokens(), 7);
  ASSERT_EQ(s.stop_size(), 2);
  EXPECT_EQ(s.stop(1), "b");
  EXPECT_EQ(r.seed, 42u);
  EXPECT_FALSE(s.has_seed());  // set per choice
  EXPECT_EQ(r.n, 3);
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.generate.logprobs(), 2);
  EXPECT_FLOAT_EQ(s.presence_penalty(), 0.25f);
  EXPECT_FLOAT_EQ(s.frequency_penalty(), -0.5f);
  EXPECT_FLOAT_EQ(s.repetition_penalty(), 1.1f);
  EXPECT_EQ(s.min_new_tokens(), 2);
  EXPECT_EQ(std::vector<int32_t>(s.stop_token_ids().begin(), s.stop_token_ids().end()),
            (std::vector<int32_t>{5, 6}));
  EXPECT_TRUE(s.ignore_eos());
  EXPECT_TRUE(r.generate.has_skip_special_tokens());
  EXPECT_FALSE(r.generate.skip_special_tokens());
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  ASSERT_TRUE(r.generate.chat().has_enable_thinking());
  EXPECT_FALSE(r.generate.chat().enable_thinking());
  EXPECT_EQ(ForChoice(r, 42, 2).sampling().seed(), 44u);
}

TEST(OpenAiProtocolTest, UnsetFieldsStayUnsetSoTheModelDefaultsApply) {
  ParsedRequest r = Chat(WithHi(R"("temperature": null, "stop": null)"));
  EXPECT_FALSE(r.generate.sampling().has_temperature());
  EXPECT_FALSE(r.generate.sampling().has_top_p());
  EXPECT_FALSE(r.generate.sampling().has_max_new_tokens());
  EXPECT_FALSE(r.seed.has_value());
  EXPECT_EQ(r.n, 1);
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.generate.chat().has_enable_thinking());
  EXPECT_EQ(r.generate.model(), "");
}

TEST(OpenAiProtocolTest, MaxCompletionTokensWinsOverMaxTokens) {
  EXPECT_EQ(
      Chat(WithHi(R"("max_tokens": 9, "max_completion_tokens": 4)")).generate.sampling().max_new_tokens(), 4);
  EXPECT_EQ(Chat(WithHi(R"("max_tokens": 5.0)")).generate.sampling().max_new_tokens(), 5);
}

TEST(OpenAiProtocolTest, StopAsAString) {
  ParsedRequest r = Chat(WithHi(R"("stop": "END")"));
  ASSERT_EQ(r.generate.sampling().stop_size(), 1);
  EXPECT_EQ(r.generate.sampling().stop(0), "END");
}

TEST(OpenAiProtocolTest, MessagesWithPartsReasoningToolCallsAndToolResults) {
  ParsedRequest r = Chat(R"({"messages": [
      {"role": "developer", "content": "be brief"},
      {"role": "user", "content": [{"type": "text", "text": "what is "}, {"type": "text", "text": "the weather"}],
       "name": "bob"},
      {"role": "assistant", "content": null, "reasoning_content": "need a tool",
       "tool_calls": [{"id": "call_1", "type": "function",
                       "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
      {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    "tool_choice": "auto"})");
  const moe::v1::ChatInput& chat = r.generate.chat();
  ASSERT_EQ(chat.messages_size(), 4);
  EXPECT_EQ(chat.messages(0).role(), "system");
  EXPECT_EQ(chat.messages(1).content(), "what is the weather");
  EXPECT_EQ(chat.messages(2).role(), "assistant");
  EXPECT_EQ(chat.messages(2).content(), "");
  EXPECT_EQ(chat.messages(2).reasoning_content(), "need a tool");
  ASSERT_EQ(chat.messages(2).tool_calls_size(), 1);
  EXPECT_EQ(chat.messages(2).tool_calls(0).id(), "call_1");
  EXPECT_EQ(chat.messages(2).tool_calls(0).name(), "get_weather");
  EXPECT_EQ(chat.messages(2).tool_calls(0).arguments(), R"({"city": "Paris"})");
  EXPECT_EQ(chat.messages(3).role(), "tool");
  EXPECT_EQ(chat.messages(3).tool_call_id(), "call_1");
  EXPECT_EQ(chat.messages(3).content(), "sunny");
  ASSERT_EQ(chat.tools_size(), 1);
  EXPECT_EQ(json::parse(chat.tools(0)),
            json::parse(R"({"type": "function", "function": {"name": "get_weather",
                                                             "parameters": {"type": "object"}}})"));
}

TEST(OpenAiProtocolTest, ToolChoiceNoneSendsNoTools) {
  ParsedRequest r =
      Chat(WithHi(R"("tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none")"));
  EXPECT_EQ(r.generate.chat().tools_size(), 0);
}

TEST(OpenAiProtocolTest, CompletionPromptForms) {
  EXPECT_EQ(Parse(Endpoint::kCompletions, R"({"prompt": "Hello"})").generate.text(), "Hello");
  EXPECT_EQ(Parse(Endpoint::kCompletions, R"({"prompt": ["Hello"]})").generate.text(), "Hello");
  ParsedRequest ids = Parse(Endpoint::kCompletions, R"({"prompt": [1, 2, 3], "logprobs": 2})");
  EXPECT_EQ(
      std::vector<int32_t>(ids.generate.token_ids().ids().begin(), ids.generate.token_ids().ids().end()),
      (std::vector<int32_t>{1, 2, 3}));
  EXPECT_TRUE(ids.logprobs);
  EXPECT_EQ(ids.generate.logprobs(), 2);
  EXPECT_EQ(Parse(Endpoint::kCompletions, R"({"prompt": [[4, 5]]})").generate.token_ids().ids_size(), 2);
}

struct BadCase {
  std::string body;
  std::string param;
  std::string message_part;
};

TEST(OpenAiProtocolTest, EachBadChatRequestIs400NamingTheField) {
  const std::vector<BadCase> cases = {
      {"{not json", "", "not valid JSON"},
      {"[1, 2]", "", "must be a JSON object"},
      {WithHi(R"("frobnicate": 1)"), "frobnicate", "unknown field"},
      {WithHi(R"("logit_bias": {})"), "logit_bias", "not supported"},
      {WithHi(R"("response_format": {"type": "json_object"})"), "response_format", "not supported"},
      {WithHi(R"("temperature": "hot")"), "temperature", "must be a number"},
      {WithHi(R"("top_k": 1.5)"), "top_k", "must be an integer"},
      {WithHi(R"("max_tokens": -1)"), "max_tokens", "must be at least 0"},
      {WithHi(R"("max_completion_tokens": -5)"), "max_completion_tokens", "must be at least 0"},
      {WithHi(R"("max_tokens": 1e20)"), "max_tokens", "must be an integer"},
      {WithHi(R"("n": 0)"), "n", "must be at least 1"},
      {WithHi(R"("n": 17)"), "n", "must be at most 16"},
      {WithHi(R"("stream": "yes")"), "stream", "must be a boolean"},
      {WithHi(R"("stop": 5)"), "stop", "must be a string or an array"},
      {WithHi(R"("stop": ["a", 1])"), "stop[1]", "must be a string"},
      {WithHi(R"("seed": "x")"), "seed", "must be an integer"},
      {WithHi(R"("logprobs": 3)"), "logprobs", "must be a boolean"},
      {WithHi(R"("top_logprobs": 2)"), "top_logprobs", "needs \"logprobs\": true"},
      {WithHi(R"("logprobs": true, "top_logprobs": 21)"), "top_logprobs", "at most 20"},
      {WithHi(R"("stop_token_ids": [-1])"), "stop_token_ids[0]", "at least 0"},
      {WithHi(R"("stream_options": {"include_usage": 1})"), "stream_options.include_usage", "boolean"},
      {WithHi(R"("stream_options": {"x": true})"), "stream_options.x", "unknown field"},
      {WithHi(R"("chat_template_kwargs": {"enable_thinking": "no"})"), "chat_template_kwargs.enable_thinking",
       "boolean"},
      {WithHi(R"("chat_template_kwargs": {"foo": 1})"), "chat_template_kwargs.foo", "unknown field"},
      {WithHi(R"("tool_choice": "required")"), "tool_choice", "only \"auto\" and \"none\""},
      {WithHi(R"("tool_choice": {"type": "function", "function": {"name": "f"}})"), "tool_choice", "only"},
      {WithHi(R"("tools": {"type": "function"})"), "tools", "must be an array"},
      {WithHi(R"("tools": [{"type": "retrieval"}])"), "tools[0].type", "only \"function\""},
      {WithHi(R"("tools": [{"type": "function", "function": {}}])"), "tools[0].function.name", "required"},
      {WithHi(R"("model": 7)"), "model", "must be a string"},
      {R"({"model": "tiny"})", "messages", "is required"},
      {R"({"messages": []})", "messages", "must not be empty"},
      {R"({"messages": "hi"})", "messages", "must be an array"},
      {R"({"messages": [{"content": "hi"}]})", "messages[0].role", "is required"},
      {R"({"messages": [{"role": "wizard", "content": "hi"}]})", "messages[0].role", "must be"},
      {R"({"messages": [{"role": "user", "content": 5}]})", "messages[0].content", "string or an array"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]})",
       "messages[0].content[0].type", "only \"text\""},
      {R"({"messages": [{"role": "user", "content": "x", "color": 1}]})", "messages[0].color",
       "unknown field"},
      {R"({"messages": [{"role": "user", "content": "x", "tool_calls": []}]})", "messages[0].tool_calls",
       "only assistant"},
      {R"({"messages": [{"role": "assistant", "tool_calls": [{"type": "function", "function": {"arguments": 1,
          "name": "f"}}]}]})",
       "messages[0].tool_calls[0].function.arguments", "string"},
  };
  for (const BadCase& c : cases) {
    ApiError e = ChatError(c.body);
    EXPECT_EQ(e.http_status, 400) << c.body;
    EXPECT_EQ(e.type, "invalid_request_error") << c.body;
    EXPECT_EQ(e.param, c.param) << c.body;
    EXPECT_NE(e.message.find(c.message_part), std::string::npos) << c.body << " -> " << e.message;
  }
}

TEST(OpenAiProtocolTest, DeepNestingIs400NotARecursion) {
  const std::string deep = std::string(1 << 20, '[') + std::string(1 << 20, ']');
  ApiError e = Error(Endpoint::kCompletions, R"({"prompt": "x", "user": )" + deep + "}");
  EXPECT_EQ(e.http_status, 400);
  EXPECT_NE(e.message.find("deeper than 64 levels"), std::string::npos) << e.message;
  std::string nested = "1";
  for (int i = 0; i < 70; ++i) nested = R"({"a": )" + nested + "}";
  e = ChatError(
      WithHi(R"("tools": [{"type": "function", "function": {"name": "f", "parameters": )" + nested + "}}]"));
  EXPECT_NE(e.message.find("deeper than 64 levels"), std::string::npos) << e.message;
  // 60 levels are fine.
  nested = "1";
  for (int i = 0; i < 58; ++i) nested = R"({"a": )" + nested + "}";
  Chat(WithHi(R"("tools": [{"type": "function", "function": {"name": "f", "parameters": )" + nested + "}}]"));
}

TEST(OpenAiProtocolTest, EachBadCompletionRequestIs400NamingTheField) {
  const std::vector<BadCase> cases = {
      {R"({"prompt": ["a", "b"]})", "prompt", "only one prompt per request"},
      {R"({"prompt": 5})", "prompt", "must be a string"},
      {R"({"prompt": []})", "prompt", "must not be empty"},
      {R"({})", "prompt", "is required"},
      {R"({"prompt": [1, "x"]})", "prompt[1]", "must be an integer"},
      {R"({"prompt": "a", "logprobs": true})", "logprobs", "must be an integer"},
      {R"({"prompt": "a", "echo": true})", "echo", "not supported"},
      {R"({"prompt": "a", "messages": []})", "messages", "unknown field"},
      {R"({"prompt": "a", "max_completion_tokens": 5})", "max_completion_tokens", "unknown field"},
      {R"({"prompt": "a", "max_tokens": -3})", "max_tokens", "must be at least 0"},
  };
  for (const BadCase& c : cases) {
    ApiError e = Error(Endpoint::kCompletions, c.body);
    EXPECT_EQ(e.http_status, 400) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body;
    EXPECT_NE(e.message.find(c.message_part), std::string::npos) << c.body << " -> " << e.message;
  }
}

TEST(OpenAiProtocolTest, ErrorObjectAndGrpcCodeMapping) {
  EXPECT_EQ(json::parse(RenderError(BadRequest("top_p", "top_p: bad"))),
            json::parse(R"({"error": {"message": "top_p: bad", "type": "invalid_request_error",
                                      "param": "top_p", "code": null}})"));
  const std::vector<std::pair<grpc::StatusCode, int>> codes = {
      {grpc::StatusCode::INVALID_ARGUMENT, 400},   {grpc::StatusCode::UNAUTHENTICATED, 401},
      {grpc::StatusCode::PERMISSION_DENIED, 403},  {grpc::StatusCode::NOT_FOUND, 404},
      {grpc::StatusCode::RESOURCE_EXHAUSTED, 429}, {grpc::StatusCode::UNAVAILABLE, 503},
      {grpc::StatusCode::DEADLINE_EXCEEDED, 504},  {grpc::StatusCode::INTERNAL, 500},
      {grpc::StatusCode::CANCELLED, 500}};
  for (const auto& [code, http] : codes) {
    ApiError e = FromGrpcStatus(grpc::Status(code, "why"));
    EXPECT_EQ(e.http_status, http) << code;
    EXPECT_EQ(e.message, "why");
    json body = json::parse(RenderError(e));
    EXPECT_EQ(body["error"]["message"], "why");
    EXPECT_TRUE(body["error"].contains("type"));
    EXPECT_TRUE(body["error"].contains("param"));
    EXPECT_TRUE(body["error"].contains("code"));
  }
  EXPECT_EQ(FromGrpcStatus(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "no key")).type,
            "authentication_error");
}

moe::v1::GenerateResponse Message(const std::string& text, const std::string& reasoning = "") {
  moe::v1::GenerateResponse m;
  m.set_text(text);
  m.set_reasoning_text(reasoning);
  return m;
}

moe::v1::GenerateResponse Last(moe::v1::FinishReason reason, int prompt, int completion) {
  moe::v1::GenerateResponse m;
  m.set_finished(true);
  m.set_finish_reason(reason);
  m.mutable_usage()->set_prompt_tokens(prompt);
  m.mutable_usage()->set_completion_tokens(completion);
  return m;
}

std::string TokenName(int32_t id) {
  return "t" + std::to_string(id);
}

TEST(OpenAiProtocolTest, ChatResponseWithReasoningToolCallsAndUsage) {
  ParsedRequest r = Chat(WithHi(R"("n": 2)"));
  ChoiceResult a, b;
  a.Add(Message("", "thinking..."));
  a.Add(Message("It is"));
  a.Add(Last(moe::v1::FINISH_REASON_LENGTH, 10, 5));
  moe::v1::GenerateResponse call = Last(moe::v1::FINISH_REASON_STOP, 10, 7);
  moe::v1::ToolCall* c = call.add_tool_calls();
  c->set_id("call_x");
  c->set_name("get_weather");
  c->set_arguments(R"({"city":"Paris"})");
  b.Add(call);
  json out = json::parse(RenderResponse(r, {a, b}, "chatcmpl-1", 123, "tiny", TokenName));
  EXPECT_EQ(out["object"], "chat.completion");
  EXPECT_EQ(out["id"], "chatcmpl-1");
  EXPECT_EQ(out["created"], 123);
  EXPECT_EQ(out["model"], "tiny");
  EXPECT_EQ(out["choices"][0],
            json::parse(R"({"index": 0, "message": {"role": "assistant", "content": "It is",
                            "reasoning_content": "thinking..."}, "logprobs": null, "finish_reason": "length"})"));
  EXPECT_EQ(out["choices"][1], json::parse(R"({"index": 1, "message": {"role": "assistant", "content": null,
                            "tool_calls": [{"id": "call_x", "type": "function",
                                            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                            "logprobs": null, "finish_reason": "tool_calls"})"));
  EXPECT_EQ(out["usage"],
            json::parse(R"({"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22})"));
}

TEST(OpenAiProtocolTest, FinishReasons) {
  EXPECT_EQ(FinishReason(moe::v1::FINISH_REASON_STOP, false), "stop");
  EXPECT_EQ(FinishReason(moe::v1::FINISH_REASON_STOP_SEQUENCE, false), "stop");
  EXPECT_EQ(FinishReason(moe::v1::FINISH_REASON_STOP, true), "tool_calls");
  EXPECT_EQ(FinishReason(moe::v1::FINISH_REASON_LENGTH, true), "length");
  EXPECT_TRUE(FinishReason(moe::v1::FINISH_REASON_UNSPECIFIED, false).is_null());
}

TEST(OpenAiProtocolTest, CompletionResponseWithLogprobs) {
  ParsedRequest r = Parse(Endpoint::kCompletions, R"({"prompt": "x", "logprobs": 1})");
  ChoiceResult a;
  moe::v1::GenerateResponse m = Message("t7t8");
  for (int id : {7, 8}) {
    moe::v1::GeneratedToken* t = m.add_tokens();
    t->set_token_id(id);
    t->set_logprob(-0.5f);
    moe::v1::TokenLogprob* top = t->add_top_logprobs();
    top->set_token("t" + std::to_string(id));
    top->set_logprob(-0.5f);
  }
  a.Add(m);
  a.Add(Last(moe::v1::FINISH_REASON_STOP_SEQUENCE, 3, 2));
  json out = json::parse(RenderResponse(r, {a}, "cmpl-1", 1, "tiny", TokenName));
  EXPECT_EQ(out["object"], "text_completion");
  EXPECT_EQ(out["choices"][0]["text"], "t7t8");
  EXPECT_EQ(out["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(out["choices"][0]["logprobs"],
            json::parse(R"({"tokens": ["t7", "t8"], "token_logprobs": [-0.5, -0.5],
                            "top_logprobs": [{"t7": -0.5}, {"t8": -0.5}], "text_offset": [0, 2]})"));
}

json EventJson(const std::string& event) {
  EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
  EXPECT_EQ(event.substr(event.size() - 2), "\n\n");
  return json::parse(event.substr(6, event.size() - 8));
}

TEST(OpenAiProtocolTest, ChatChunksCarryDeltasToolCallIndicesAndUsage) {
  ParsedRequest r = Chat(WithHi(R"("stream": true, "stream_options": {"include_usage": true})"));
  StreamContext context{&r, "chatcmpl-9", 5, "tiny", TokenName};
  json role = EventJson(RenderRoleChunk(context, 0));
  EXPECT_EQ(role["object"], "chat.completion.chunk");
  EXPECT_EQ(role["choices"][0]["delta"], json::parse(R"({"role": "assistant", "content": ""})"));
  EXPECT_TRUE(role["usage"].is_null());

  json think = EventJson(RenderChunk(context, 0, Message("", "hmm"), 0, false, 0));
  EXPECT_EQ(think["choices"][0]["delta"], json::parse(R"({"reasoning_content": "hmm"})"));
  EXPECT_TRUE(think["choices"][0]["finish_reason"].is_null());

  EXPECT_EQ(RenderChunk(context, 0, Message(""), 0, false, 0), "");  // nothing to send

  moe::v1::GenerateResponse call = Message("");
  moe::v1::ToolCall* c = call.add_tool_calls();
  c->set_id("call_2");
  c->set_name("f");
  c->set_arguments("{}");
  json tool = EventJson(RenderChunk(context, 0, call, 1, true, 0));
  EXPECT_EQ(tool["choices"][0]["delta"]["tool_calls"],
            json::parse(R"([{"index": 1, "id": "call_2", "type": "function",
                              "function": {"name": "f", "arguments": "{}"}}])"));

  json last = EventJson(RenderChunk(context, 0, Last(moe::v1::FINISH_REASON_STOP, 4, 3), 2, true, 0));
  EXPECT_EQ(last["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_EQ(last["choices"][0]["delta"], json::object());

  json usage = EventJson(RenderUsageChunk(context, 4, 3));
  EXPECT_EQ(usage["choices"], json::array());
  EXPECT_EQ(usage["usage"]["total_tokens"], 7);
  EXPECT_EQ(kDoneEvent, "data: [DONE]\n\n");
}

TEST(OpenAiProtocolTest, CompletionChunkIsTextCompletion) {
  ParsedRequest r = Parse(Endpoint::kCompletions, R"({"prompt": "x", "stream": true})");
  StreamContext context{&r, "cmpl-9", 5, "tiny", TokenName};
  json chunk = EventJson(RenderChunk(context, 2, Message(" world"), 0, false, 5));
  EXPECT_EQ(chunk["object"], "text_completion");
  EXPECT_EQ(chunk["choices"][0]["index"], 2);
  EXPECT_EQ(chunk["choices"][0]["text"], " world");
  EXPECT_FALSE(chunk.contains("usage"));
}

TEST(OpenAiProtocolTest, ModelsAndIds) {
  moe::v1::ModelInfo info;
  info.set_model("tiny");
  info.set_max_context_length(4096);
  json models = json::parse(RenderModels(info, 9));
  EXPECT_EQ(models["object"], "list");
  EXPECT_EQ(models["data"][0]["id"], "tiny");
  EXPECT_EQ(models["data"][0]["object"], "model");
  EXPECT_EQ(models["data"][0]["max_model_len"], 4096);
  const std::string a = NewResponseId(Endpoint::kChatCompletions),
                    b = NewResponseId(Endpoint::kChatCompletions);
  EXPECT_EQ(a.rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(a.size(), std::string("chatcmpl-").size() + 24);
  EXPECT_NE(a, b);
  EXPECT_EQ(NewResponseId(Endpoint::kCompletions).rfind("cmpl-", 0), 0u);
  EXPECT_NE(RandomSeed(), RandomSeed());
}

}  // namespace
}  // namespace moe::router::openai
