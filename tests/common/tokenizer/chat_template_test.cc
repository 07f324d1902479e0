#include "common/tokenizer/chat_template.h"

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/tokenizer/qwen3_tokenizer_files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe::tokenizer {
namespace {

// Expected strings were derived by reading the Jinja templates (the hybrid one is in
// third_party/qwen3_tokenizer/tokenizer_config.json) and checked with jinja2 3.1 rendering the
// real template texts.

using nlohmann::ordered_json;
using ::testing::HasSubstr;

std::string Render(ChatTemplateFlavor flavor, const std::vector<ChatMessage>& messages,
                   ChatTemplateOptions options = {}) {
  auto text = RenderChat(flavor, messages, options);
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : "";
}

const std::vector<ChatMessage> kHi = {{.role = "user", .content = "Hi"}};

TEST(ChatTemplateTest, HybridLeavesThinkingToTheModelByDefault) {
  EXPECT_EQ(Render(ChatTemplateFlavor::kHybrid, kHi),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(Render(ChatTemplateFlavor::kHybrid, kHi, {.enable_thinking = true}),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, HybridWithThinkingDisabledAppendsAnEmptyThinkBlock) {
  EXPECT_EQ(Render(ChatTemplateFlavor::kHybrid, kHi, {.enable_thinking = false}),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
}

TEST(ChatTemplateTest, Instruct2507NeverEmitsThinkTags) {
  EXPECT_EQ(Render(ChatTemplateFlavor::kInstruct2507, kHi, {.enable_thinking = false}),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, Thinking2507OpensTheThinkBlock) {
  EXPECT_EQ(Render(ChatTemplateFlavor::kThinking2507, kHi, {.enable_thinking = false}),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n");
}

TEST(ChatTemplateTest, OmitsTheGenerationPromptWhenNotAsked) {
  EXPECT_EQ(Render(ChatTemplateFlavor::kThinking2507, kHi, {.add_generation_prompt = false}),
            "<|im_start|>user\nHi<|im_end|>\n");
}

std::vector<ChatMessage> History() {
  return {{.role = "system", .content = "You are helpful."},
          {.role = "user", .content = "What is 2+2?"},
          {.role = "assistant", .content = "<think>\nadd them\n</think>\n\n4"},
          {.role = "user", .content = "And 3+3?"},
          {.role = "assistant", .content = "6", .reasoning_content = "\nadd again\n"}};
}

TEST(ChatTemplateTest, HybridDropsReasoningBeforeTheLastQueryAndKeepsItAfter) {
  EXPECT_EQ(Render(ChatTemplateFlavor::kHybrid, History(), {.add_generation_prompt = false}),
            "<|im_start|>system\nYou are helpful.<|im_end|>\n"
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
            "<|im_start|>assistant\n4<|im_end|>\n"
            "<|im_start|>user\nAnd 3+3?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\nadd again\n</think>\n\n6<|im_end|>\n");
}

TEST(ChatTemplateTest, Thinking2507RendersHistoryLikeHybrid) {
  EXPECT_EQ(Render(ChatTemplateFlavor::kThinking2507, History(), {.add_generation_prompt = false}),
            Render(ChatTemplateFlavor::kHybrid, History(), {.add_generation_prompt = false}));
}

TEST(ChatTemplateTest, Instruct2507KeepsAssistantContentVerbatim) {
  EXPECT_EQ(Render(ChatTemplateFlavor::kInstruct2507, History()),
            "<|im_start|>system\nYou are helpful.<|im_end|>\n"
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\nadd them\n</think>\n\n4<|im_end|>\n"
            "<|im_start|>user\nAnd 3+3?<|im_end|>\n"
            "<|im_start|>assistant\n6<|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, TreatsWrappedToolResponsesAsNotAQuery) {
  const std::vector<ChatMessage> messages = {
      {.role = "user", .content = "Q"},
      {.role = "assistant", .content = "a1", .reasoning_content = "r1"},
      {.role = "user", .content = "<tool_response>\nx\n</tool_response>"},
      {.role = "assistant", .content = "\n\na2", .reasoning_content = "r2"},
      {.role = "assistant", .content = "a3"}};
  EXPECT_EQ(Render(ChatTemplateFlavor::kHybrid, messages, {.add_generation_prompt = false}),
            "<|im_start|>user\nQ<|im_end|>\n"
            "<|im_start|>assistant\n<think>\nr1\n</think>\n\na1<|im_end|>\n"
            "<|im_start|>user\n<tool_response>\nx\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n<think>\nr2\n</think>\n\na2<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\na3<|im_end|>\n");
}

std::vector<ordered_json> WeatherTools() {
  return {ordered_json::parse(R"({"type": "function", "function": {"name": "get_weather",
      "description": "Weather of a city", "parameters": {"type": "object",
      "properties": {"city": {"type": "string"}}, "required": ["city"]}}})")};
}

std::vector<ChatMessage> ToolConversation() {
  return {{.role = "system", .content = "Be brief."},
          {.role = "user", .content = "Weather in Paris and Lyon?"},
          {.role = "assistant",
           .content = "",
           .reasoning_content = "need weather",
           .tool_calls = {{"get_weather", ordered_json::parse(R"({"city": "Paris"})")},
                          {"get_weather", ordered_json("{\"city\":\"Lyon\"}")}}},
          {.role = "tool", .content = "{\"temp\": 20}"},
          {.role = "tool", .content = "18 degrees"}};
}

constexpr char kToolSystem[] =
    "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to assist "
    "with the user query.\n\nYou are provided with function signatures within <tools></tools> "
    "XML tags:\n<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", "
    "\"description\": \"Weather of a city\", \"parameters\": {\"type\": \"object\", "
    "\"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call><|im_end|>\n";

TEST(ChatTemplateTest, RendersToolsToolCallsAndToolResponses) {
  EXPECT_EQ(Render(ChatTemplateFlavor::kHybrid, ToolConversation(), {.tools = WeatherTools()}),
            std::string(kToolSystem) +
                "<|im_start|>user\nWeather in Paris and Lyon?<|im_end|>\n"
                "<|im_start|>assistant\n<think>\nneed weather\n</think>\n\n"
                "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
                "</tool_call>\n"
                "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Lyon\"}}\n"
                "</tool_call><|im_end|>\n"
                "<|im_start|>user\n<tool_response>\n{\"temp\": 20}\n</tool_response>\n"
                "<tool_response>\n18 degrees\n</tool_response><|im_end|>\n"
                "<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, SeparatesToolCallFromContentWithNewline) {
  const std::vector<ChatMessage> messages = {
      {.role = "user", .content = "go"},
      {.role = "assistant", .content = "Calling.", .tool_calls = {{"f", ordered_json::object()}}}};
  EXPECT_EQ(Render(ChatTemplateFlavor::kInstruct2507, messages, {.add_generation_prompt = false}),
            "<|im_start|>user\ngo<|im_end|>\n<|im_start|>assistant\nCalling.\n<tool_call>\n"
            "{\"name\": \"f\", \"arguments\": {}}\n</tool_call><|im_end|>\n");
}

TEST(ChatTemplateTest, RejectsEmptyMessagesAndUnknownRoles) {
  EXPECT_EQ(RenderChat(ChatTemplateFlavor::kHybrid, {}, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<ChatMessage> robot = {{.role = "user", .content = "a"},
                                          {.role = "robot", .content = "b"}};
  auto text = RenderChat(ChatTemplateFlavor::kHybrid, robot, {});
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(text.status().message()), HasSubstr("messages[1]: unknown role"));
}

TEST(ChatTemplateTest, ReadsOpenAiStyleMessages) {
  const auto json = ordered_json::parse(R"([
      {"role": "user", "content": "go"},
      {"role": "assistant", "content": null,
       "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]}])");
  auto messages = ChatMessagesFromJson(json);
  ASSERT_TRUE(messages.ok()) << messages.status();
  EXPECT_EQ(Render(ChatTemplateFlavor::kHybrid, *messages, {.add_generation_prompt = false}),
            "<|im_start|>user\ngo<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call><|im_end|>\n");
  EXPECT_EQ(ChatMessagesFromJson(ordered_json::parse(R"([{"role": "user", "content": 5}])")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ChatMessagesFromJson(ordered_json::parse(R"([{"content": "x"}])")).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ChatTemplateTest, DetectsTheFlavourFromTheTemplateText) {
  const auto config = ordered_json::parse(EmbeddedQwen3TokenizerConfigJson());
  EXPECT_EQ(DetectChatTemplateFlavor(config["chat_template"].get<std::string>()).value(),
            ChatTemplateFlavor::kHybrid);
  EXPECT_EQ(DetectChatTemplateFlavor(
                "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n<think>\\n' }}")
                .value(),
            ChatTemplateFlavor::kThinking2507);
  EXPECT_EQ(DetectChatTemplateFlavor("{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}")
                .value(),
            ChatTemplateFlavor::kInstruct2507);
  EXPECT_EQ(DetectChatTemplateFlavor("{{ bos_token }}{{ messages }}").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseChatTemplateFlavor("thinking-2507").value(), ChatTemplateFlavor::kThinking2507);
  EXPECT_EQ(ParseChatTemplateFlavor("chatml").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ChatTemplateTest, ReadsTheFlavourFromAModelDir) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("chat_template_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  EXPECT_EQ(ChatTemplateFlavorFromModelDir(dir).value(), ChatTemplateFlavor::kHybrid);
  std::ofstream(dir / "tokenizer_config.json") << R"({"chat_template": "{{- '<|im_start|>assistant\\n' }}"})";
  EXPECT_EQ(ChatTemplateFlavorFromModelDir(dir).value(), ChatTemplateFlavor::kInstruct2507);
  std::ofstream(dir / "tokenizer_config.json") << "{not json";
  EXPECT_EQ(ChatTemplateFlavorFromModelDir(dir).status().code(), absl::StatusCode::kInvalidArgument);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moe::tokenizer
