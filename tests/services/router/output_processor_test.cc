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

}  // namespace
}  // namespace moe::router
