#include "services/router/output_processor.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "services/router/served_model.h"
#include "tests/util/test_models.h"

namespace moe::router {
namespace {

const ServedModel& Model() {
  static const ServedModel* model = ServedModel::Load(testing::TestModelDir("tiny", "bf16"), "")->release();
  return *model;
}

std::vector<int32_t> Ids(const std::string& text) {
  return *Model().tokenizer->Encode(text);
}

OutputDelta RunAll(OutputProcessor& p, const std::vector<int32_t>& ids) {
  OutputDelta d;
  for (int32_t id : ids) p.Add(id, &d);
  p.Finish(&d);
  return d;
}

TEST(OutputProcessorTest, ThinkTokensAreQwen3Ids) {
  EXPECT_EQ(Model().think.begin, 151667);
  EXPECT_EQ(Model().think.end, 151668);
}

TEST(OutputProcessorTest, SplitsThinkingFromAnswer) {
  OutputProcessor p(*Model().tokenizer, true, Model().think, false, {});
  OutputDelta d = RunAll(p, Ids("<think>\nLet me see.\n</think>\n\nThe answer is 4.<|im_end|>"));
  EXPECT_EQ(d.reasoning_text, "\nLet me see.\n");
  EXPECT_EQ(d.text, "\n\nThe answer is 4.");
}

TEST(OutputProcessorTest, PromptOpeningThinkStartsInReasoning) {
  EXPECT_TRUE(Model().think.PromptOpensThinking(Ids("<|im_start|>assistant\n<think>\n")));
  EXPECT_FALSE(Model().think.PromptOpensThinking(Ids("<think>\n\n</think>\n\n")));
  OutputProcessor p(*Model().tokenizer, true, Model().think, true, {});
  OutputDelta d = RunAll(p, Ids("hmm</think>yes"));
  EXPECT_EQ(d.reasoning_text, "hmm");
  EXPECT_EQ(d.text, "yes");
}

TEST(OutputProcessorTest, StopStringSpanningTokensTruncatesAndStops) {
  OutputProcessor p(*Model().tokenizer, true, Model().think, false, {"world peace"});
  const std::vector<int32_t> ids = Ids("Hello world peace and more");
  ASSERT_GT(ids.size(), 3u);
  OutputDelta d;
  size_t consumed = 0;
  for (int32_t id : ids) {
    if (!p.Add(id, &d)) break;
    ++consumed;
  }
  EXPECT_TRUE(p.stopped());
  EXPECT_EQ(d.text, "Hello ");
  EXPECT_EQ(d.matched_stop, 0u);
  EXPECT_EQ(consumed, ids.size() - 2);  // " and", " more" are not consumed
}

TEST(OutputProcessorTest, MultiByteCharactersAreNeverSplit) {
  OutputProcessor p(*Model().tokenizer, true, Model().think, false, {});
  const std::vector<int32_t> ids = Ids("猫🐱");
  std::string all;
  for (int32_t id : ids) {
    OutputDelta d;
    p.Add(id, &d);
    // Every piece is complete UTF-8 on its own.
    EXPECT_EQ(Model().tokenizer->Encode(d.text).ok(), true);
    all += d.text;
  }
  OutputDelta tail;
  p.Finish(&tail);
  EXPECT_EQ(all + tail.text, "猫🐱");
}

// The Qwen3 tokenizer's <tool_call> / </tool_call> are added tokens that are not special: they
// are single ids and survive skip_special_tokens as text (unlike <|im_end|>).
TEST(OutputProcessorTest, ToolCallTagsAreNonSpecialQwen3Tokens) {
  const tokenizer::Tokenizer& tok = *Model().tokenizer;
  EXPECT_EQ(tok.TokenToId("<tool_call>"), 151657);
  EXPECT_EQ(tok.TokenToId("</tool_call>"), 151658);
  EXPECT_EQ(Ids("<tool_call>"), (std::vector<int32_t>{151657}));
  EXPECT_EQ(Ids("</tool_call>"), (std::vector<int32_t>{151658}));
  const std::vector<int32_t> ids = {151657, 151658, 151645};  // <tool_call></tool_call><|im_end|>
  EXPECT_EQ(tok.Decode(ids, /*skip_special_tokens=*/true), "<tool_call></tool_call>");
}

const char kToolAnswer[] =
    "Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
    "</tool_call><|im_end|>";

TEST(OutputProcessorTest, ToolCallsAreParsedOutOfTheAnswerWhenAsked) {
  const std::vector<int32_t> ids = Ids(kToolAnswer);
  OutputProcessor p(*Model().tokenizer, true, Model().think, false, {}, /*parse_tool_calls=*/true);
  OutputDelta all;
  size_t closing_token = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    OutputDelta d;
    p.Add(ids[i], &d);
    all.text += d.text;
    if (!d.tool_calls.empty()) closing_token = i;
    for (GeneratedToolCall& c : d.tool_calls) all.tool_calls.push_back(std::move(c));
  }
  p.Finish(&all);
  EXPECT_EQ(all.text, "Checking.\n");
  ASSERT_EQ(all.tool_calls.size(), 1u);
  EXPECT_EQ(all.tool_calls[0].name, "get_weather");
  EXPECT_EQ(all.tool_calls[0].arguments, R"({"city":"Paris"})");
  EXPECT_EQ(ids[closing_token], 151658);  // reported with its </tool_call>

  // Without tools the same tokens are plain text.
  OutputProcessor plain(*Model().tokenizer, true, Model().think, false, {});
  OutputDelta d = RunAll(plain, ids);
  EXPECT_TRUE(d.tool_calls.empty());
  EXPECT_EQ(d.text, Model().tokenizer->Decode(ids, true));
}

TEST(OutputProcessorTest, ToolCallsInReasoningAreNotParsed) {
  OutputProcessor p(*Model().tokenizer, true, Model().think, false, {}, true);
  OutputDelta d = RunAll(p, Ids("<think>maybe <tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>"
                                "</think>ok"));
  EXPECT_TRUE(d.tool_calls.empty());
  EXPECT_EQ(d.reasoning_text, "maybe <tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>");
  EXPECT_EQ(d.text, "ok");
}

TEST(OutputProcessorTest, StopStringsApplyBeforeToolCallParsing) {
  // A stop string in the content stops as usual.
  {
    OutputProcessor p(*Model().tokenizer, true, Model().think, false, {"Check"}, true);
    OutputDelta d = RunAll(p, Ids(kToolAnswer));
    EXPECT_TRUE(p.stopped());
    EXPECT_EQ(d.text, "");
    EXPECT_TRUE(d.tool_calls.empty());
  }
  // One inside the call cuts it off: the unfinished block is returned as content.
  {
    OutputProcessor p(*Model().tokenizer, true, Model().think, false, {"Paris"}, true);
    OutputDelta d = RunAll(p, Ids(kToolAnswer));
    EXPECT_TRUE(p.stopped());
    EXPECT_EQ(d.matched_stop, 0u);
    EXPECT_TRUE(d.tool_calls.empty());
    EXPECT_EQ(d.text, "Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"");
  }
}

}  // namespace
}  // namespace moe::router
