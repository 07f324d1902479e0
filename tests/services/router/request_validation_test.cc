#include "services/router/request_validation.h"

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/util/test_models.h"

namespace moe::router {
namespace {

const ServedModel& Model() {
  static const ServedModel* model = [] {
    auto m = ServedModel::Load(testing::TestModelDir("tiny", "bf16"), "tiny");
    if (!m.ok()) {
      ADD_FAILURE() << m.status();
      std::abort();
    }
    return m->release();
  }();
  return *model;
}

moe::v1::GenerateRequest Good() {
  moe::v1::GenerateRequest r;
  r.set_text("Hello world");
  return r;
}

const char kWeatherTool[] =
    R"({"type": "function", "function": {"name": "get_weather", "description": "Weather now", )"
    R"("parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})";

// A chat with one user message and two tools: kWeatherTool and `tool`.
void ChatWithTool(moe::v1::GenerateRequest* r, const std::string& tool) {
  auto* m = r->mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("Weather in Paris?");
  r->mutable_chat()->add_tools(kWeatherTool);
  r->mutable_chat()->add_tools(tool);
}

// A user message, then a `role` message with one tool call.
void ChatWithToolCall(moe::v1::GenerateRequest* r, const std::string& role, const std::string& name,
                      const std::string& arguments) {
  auto* m = r->mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("Weather in Paris?");
  m = r->mutable_chat()->add_messages();
  m->set_role(role);
  auto* call = m->add_tool_calls();
  call->set_id("call_1");
  call->set_name(name);
  call->set_arguments(arguments);
}

struct BadCase {
  std::string name;
  std::function<void(moe::v1::GenerateRequest*)> mutate;
  std::string field;  // the message must start with it
};

TEST(RequestValidationTest, EachBadRequestIsInvalidArgumentNamingTheField) {
  const int64_t context = Model().config.max_position_embeddings;
  const int64_t vocab = Model().config.vocab_size;
  const std::vector<BadCase> cases = {
      {"no input", [](auto* r) { r->clear_input(); }, "input"},
      {"empty text", [](auto* r) { r->set_text(""); }, "text"},
      {"empty ids", [](auto* r) { r->mutable_token_ids(); }, "token_ids.ids"},
      {"empty chat", [](auto* r) { r->mutable_chat(); }, "chat.messages"},
      {"id too large",
       [&](auto* r) {
         r->mutable_token_ids()->add_ids(5);
         r->mutable_token_ids()->add_ids(static_cast<int32_t>(vocab));
       },
       "token_ids.ids[1]"},
      {"negative id", [](auto* r) { r->mutable_token_ids()->add_ids(-1); }, "token_ids.ids[0]"},
      {"prompt over context",
       [&](auto* r) { r->mutable_token_ids()->mutable_ids()->Resize(static_cast<int>(context), 11); },
       "prompt"},
      {"max_new_tokens 0", [](auto* r) { r->mutable_sampling()->set_max_new_tokens(0); },
       "sampling.max_new_tokens"},
      {"max_new_tokens over context",
       [&](auto* r) { r->mutable_sampling()->set_max_new_tokens(static_cast<int32_t>(context)); },
       "sampling.max_new_tokens"},
      {"negative temperature", [](auto* r) { r->mutable_sampling()->set_temperature(-0.5f); },
       "sampling.temperature"},
      {"NaN temperature", [](auto* r) { r->mutable_sampling()->set_temperature(std::nanf("")); },
       "sampling.temperature"},
      {"top_p 0", [](auto* r) { r->mutable_sampling()->set_top_p(0.0f); }, "sampling.top_p"},
      {"top_p over 1", [](auto* r) { r->mutable_sampling()->set_top_p(1.5f); }, "sampling.top_p"},
      {"top_k below -1", [](auto* r) { r->mutable_sampling()->set_top_k(-2); }, "sampling.top_k"},
      {"min_p over 1", [](auto* r) { r->mutable_sampling()->set_min_p(1.5f); }, "sampling.min_p"},
      {"repetition_penalty 0", [](auto* r) { r->mutable_sampling()->set_repetition_penalty(0.0f); },
       "sampling.repetition_penalty"},
      {"min_new_tokens negative", [](auto* r) { r->mutable_sampling()->set_min_new_tokens(-1); },
       "sampling.min_new_tokens"},
      {"empty stop", [](auto* r) { r->mutable_sampling()->add_stop(""); }, "sampling.stop[0]"},
      {"stop token out of range",
       [&](auto* r) { r->mutable_sampling()->add_stop_token_ids(static_cast<int32_t>(vocab) + 3); },
       "sampling.stop_token_ids[0]"},
      {"logprobs 21", [](auto* r) { r->set_logprobs(21); }, "logprobs"},
      {"logprobs negative", [](auto* r) { r->set_logprobs(-1); }, "logprobs"},
      {"unknown model", [](auto* r) { r->set_model("gpt-9"); }, "model"},
      {"1 MiB model name", [](auto* r) { r->set_model(std::string(1 << 20, 'm')); },
       "model: is longer than 256 bytes"},
      {"invalid UTF-8 text", [](auto* r) { r->set_text("ab\xff"); }, "text"},
      {"invalid UTF-8 stop", [](auto* r) { r->mutable_sampling()->add_stop("\xc3"); }, "sampling.stop[0]"},
      {"invalid UTF-8 chat",
       [](auto* r) {
         auto* m = r->mutable_chat()->add_messages();
         m->set_role("user");
         m->set_content("\xe2\x82");
       },
       "chat.messages[0].content"},
      {"text over size limit", [](auto* r) { r->set_text(std::string((1 << 20) + 1, 'a')); }, "text"},
      {"chat over size limit",
       [](auto* r) {
         auto* m = r->mutable_chat()->add_messages();
         m->set_role("user");
         m->set_content(std::string((1 << 20) + 1, 'a'));
       },
       "chat.messages[0].content"},
      {"unknown role",
       [](auto* r) {
         auto* m = r->mutable_chat()->add_messages();
         m->set_role("wizard");
         m->set_content("hi");
       },
       "chat.messages[0].role"},
      {"presence_penalty over 2", [](auto* r) { r->mutable_sampling()->set_presence_penalty(2.5f); },
       "sampling.presence_penalty"},
      {"NaN presence_penalty", [](auto* r) { r->mutable_sampling()->set_presence_penalty(std::nanf("")); },
       "sampling.presence_penalty"},
      {"frequency_penalty below -2", [](auto* r) { r->mutable_sampling()->set_frequency_penalty(-2.5f); },
       "sampling.frequency_penalty"},
      {"infinite frequency_penalty",
       [](auto* r) { r->mutable_sampling()->set_frequency_penalty(std::numeric_limits<float>::infinity()); },
       "sampling.frequency_penalty"},
      {"tool not JSON", [](auto* r) { ChatWithTool(r, "{\"type\": \"function\""); },
       "chat.tools[1]: is not valid JSON"},
      {"tool not an object", [](auto* r) { ChatWithTool(r, "[1, 2]"); },
       "chat.tools[1]: is not a JSON object"},
      {"tool nested too deep",
       [](auto* r) { ChatWithTool(r, "{\"a\": " + std::string(100, '[') + std::string(100, ']') + "}"); },
       "chat.tools[1]: nests deeper"},
      {"too many tools",
       [](auto* r) {
         ChatWithTool(r, "{}");
         for (int i = 0; i < 200; ++i) r->mutable_chat()->add_tools("{}");
       },
       "chat.tools: has 202 tools"},
      {"tool call arguments not JSON",
       [](auto* r) { ChatWithToolCall(r, "assistant", "get_weather", "{\"city\": "); },
       "chat.messages[1].tool_calls[0].arguments: is not valid JSON"},
      {"tool call arguments not an object",
       [](auto* r) { ChatWithToolCall(r, "assistant", "get_weather", "\"Paris\""); },
       "chat.messages[1].tool_calls[0].arguments: is not a JSON object"},
      {"tool call without a name", [](auto* r) { ChatWithToolCall(r, "assistant", "", "{}"); },
       "chat.messages[1].tool_calls[0].name: is empty"},
      {"tool call on a user message", [](auto* r) { ChatWithToolCall(r, "user", "f", "{}"); },
       "chat.messages[1].tool_calls"},
      {"tools over the size limit",
       [](auto* r) {
         ChatWithTool(r, "{\"d\": \"" + std::string(700 << 10, 'x') + "\"}");
         r->mutable_chat()->add_tools("{\"d\": \"" + std::string(700 << 10, 'y') + "\"}");
       },
       "chat: messages and tools total"},
  };
  for (const BadCase& c : cases) {
    moe::v1::GenerateRequest r = Good();
    c.mutate(&r);
    absl::StatusOr<PreparedRequest> p = PrepareRequest(r, Model(), RequestLimits{}, "id");
    ASSERT_FALSE(p.ok()) << c.name;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_EQ(p.status().message().substr(0, c.field.size()), c.field) << c.name << ": " << p.status();
  }
}

TEST(RequestValidationTest, PromptTooLongHasItsOwnRejectReason) {
  moe::v1::GenerateRequest r;
  r.mutable_token_ids()->mutable_ids()->Resize(static_cast<int>(Model().config.max_position_embeddings), 11);
  RejectReason reason = RejectReason::kInvalidArgument;
  EXPECT_FALSE(PrepareRequest(r, Model(), RequestLimits{}, "id", &reason).ok());
  EXPECT_EQ(reason, RejectReason::kPromptTooLong);
}

TEST(RequestValidationTest, ResolvesDefaultsAndFillsWorkerRequest) {
  moe::v1::GenerateRequest r;
  r.mutable_token_ids()->add_ids(1);
  r.mutable_token_ids()->add_ids(2);
  r.mutable_sampling()->set_temperature(0.0f);
  r.mutable_sampling()->set_seed(7);
  r.mutable_sampling()->add_stop_token_ids(9);
  r.set_logprobs(3);
  absl::StatusOr<PreparedRequest> p = PrepareRequest(r, Model(), RequestLimits{}, "gen-1");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->request_id, "gen-1");
  EXPECT_EQ(p->prompt, (std::vector<int32_t>{1, 2}));
  EXPECT_TRUE(p->skip_special_tokens);
  const int32_t expected_max = static_cast<int32_t>(Model().generation.max_new_tokens.value_or(256));
  EXPECT_EQ(p->max_new_tokens, expected_max);
  const auto& w = p->worker_request;
  EXPECT_EQ(w.prompt_size(), 2);
  EXPECT_EQ(w.sampling().temperature(), 0.0f);
  EXPECT_EQ(w.sampling().seed(), 7u);
  EXPECT_EQ(w.max_new_tokens(), expected_max);
  ASSERT_EQ(w.stop_token_ids_size(), 1);
  EXPECT_EQ(w.stop_token_ids(0), 9);
  EXPECT_EQ(w.top_logprobs(), 3);
}

TEST(RequestValidationTest, ChatUsesTemplateAndNamedModelIsAccepted) {
  moe::v1::GenerateRequest r;
  r.set_model("tiny");
  auto* m = r.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("Hi");
  r.mutable_chat()->set_enable_thinking(false);
  absl::StatusOr<PreparedRequest> p = PrepareRequest(r, Model(), RequestLimits{}, "id");
  ASSERT_TRUE(p.ok()) << p.status();
  const std::string text = Model().tokenizer->Decode(p->prompt);
  EXPECT_EQ(text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  EXPECT_FALSE(p->start_in_reasoning);
}

TEST(RequestValidationTest, PresenceAndFrequencyPenaltiesReachTheWorkerRequest) {
  moe::v1::GenerateRequest r = Good();
  absl::StatusOr<PreparedRequest> p = PrepareRequest(r, Model(), RequestLimits{}, "id");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->worker_request.sampling().presence_penalty(), 0.0f);
  EXPECT_EQ(p->worker_request.sampling().frequency_penalty(), 0.0f);
  r.mutable_sampling()->set_presence_penalty(-2.0f);
  r.mutable_sampling()->set_frequency_penalty(1.5f);
  p = PrepareRequest(r, Model(), RequestLimits{}, "id");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->worker_request.sampling().presence_penalty(), -2.0f);
  EXPECT_EQ(p->worker_request.sampling().frequency_penalty(), 1.5f);
}

// Tools and tool calls go through the chat template (whose rendering tests/common/tokenizer checks
// byte for byte) with their keys in the client's order, and tools turn on tool-call parsing.
TEST(RequestValidationTest, ChatToolsAndToolCallsAreRenderedInOrder) {
  moe::v1::GenerateRequest r;
  ChatWithTool(&r, R"({"type": "function", "function": {"name": "zeta", "parameters": {"z": 1, "a": 2}}})");
  auto* m = r.mutable_chat()->add_messages();
  m->set_role("assistant");
  auto* call = m->add_tool_calls();
  call->set_id("call_1");
  call->set_name("get_weather");
  call->set_arguments(R"({"unit":"c","city":"Paris"})");
  m = r.mutable_chat()->add_messages();
  m->set_role("tool");
  m->set_tool_call_id("call_1");
  m->set_content("18 C");
  absl::StatusOr<PreparedRequest> p = PrepareRequest(r, Model(), RequestLimits{}, "id");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->parse_tool_calls);
  const std::string text = Model().tokenizer->Decode(p->prompt);
  EXPECT_NE(text.find("<tools>\n" + std::string(kWeatherTool) +
                      "\n{\"type\": \"function\", \"function\": {\"name\": \"zeta\", "
                      "\"parameters\": {\"z\": 1, \"a\": 2}}}\n</tools>"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"unit\": \"c\", "
                      "\"city\": \"Paris\"}}\n</tool_call>"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("<tool_response>\n18 C\n</tool_response>"), std::string::npos) << text;

  // The Tokenize path shares TokenizeChat.
  absl::StatusOr<std::vector<int32_t>> ids = TokenizeChat(Model(), r.chat(), RequestLimits{}, "chat");
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, p->prompt);

  // No tools: no parsing, even with tool calls in the history.
  r.mutable_chat()->clear_tools();
  p = PrepareRequest(r, Model(), RequestLimits{}, "id");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_FALSE(p->parse_tool_calls);
}

}  // namespace
}  // namespace moe::router
