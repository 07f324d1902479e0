#include "services/router/tool_call_parser.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe::router {
namespace {

using ::testing::MatchesRegex;

// What a parser made of a whole text.
struct Parsed {
  std::string content;
  std::vector<GeneratedToolCall> calls;
  // Index of the piece whose Push reported each call.
  std::vector<size_t> call_piece;
};

// Deterministic ids: call_0, call_1, ...
ToolCallParser Counting() {
  auto n = std::make_shared<int>(0);
  return ToolCallParser([n] { return "call_" + std::to_string((*n)++); });
}

Parsed RunPieces(const std::vector<std::string>& pieces) {
  ToolCallParser parser = Counting();
  Parsed out;
  for (size_t i = 0; i < pieces.size(); ++i) {
    const size_t before = out.calls.size();
    parser.Push(pieces[i], &out.content, &out.calls);
    for (size_t k = before; k < out.calls.size(); ++k) out.call_piece.push_back(i);
  }
  parser.Finish(&out.content);
  EXPECT_EQ(parser.held_bytes(), 0u);
  EXPECT_FALSE(parser.in_block());
  return out;
}

// The text whole, then split at every byte position and byte by byte: the result must not depend
// on the cut.
Parsed RunEverySplit(const std::string& text) {
  const Parsed whole = RunPieces({text});
  auto same = [&](const Parsed& p, const std::string& how) {
    EXPECT_EQ(p.content, whole.content) << how;
    ASSERT_EQ(p.calls.size(), whole.calls.size()) << how;
    for (size_t i = 0; i < p.calls.size(); ++i) {
      EXPECT_EQ(p.calls[i].id, whole.calls[i].id) << how;
      EXPECT_EQ(p.calls[i].name, whole.calls[i].name) << how;
      EXPECT_EQ(p.calls[i].arguments, whole.calls[i].arguments) << how;
    }
  };
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    same(RunPieces({text.substr(0, cut), text.substr(cut)}), "cut at " + std::to_string(cut));
  }
  std::vector<std::string> bytes;
  for (char c : text) bytes.emplace_back(1, c);
  same(RunPieces(bytes), "byte by byte");
  return whole;
}

const std::string kWeatherCall =
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}\n"
    "</tool_call>";

TEST(ToolCallParserTest, OneCallWholeAndAtEverySplit) {
  const Parsed p = RunEverySplit(kWeatherCall);
  EXPECT_EQ(p.content, "");
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].id, "call_0");
  EXPECT_EQ(p.calls[0].name, "get_weather");
  // Compact, keys in the model's order (not sorted).
  EXPECT_EQ(p.calls[0].arguments, R"({"city":"Paris","unit":"c"})");
}

TEST(ToolCallParserTest, ContentBeforeAndSeveralCalls) {
  const std::string text =
      "Let me check both.\n\n" + kWeatherCall +
      "\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": "
      "\"Europe/Paris\", \"nested\": {\"b\": [1, 2.5, null], \"a\": true}}}\n</tool_call>";
  const Parsed p = RunEverySplit(text);
  // The whitespace between and after calls is not content.
  EXPECT_EQ(p.content, "Let me check both.\n\n");
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.calls[0].name, "get_weather");
  EXPECT_EQ(p.calls[1].id, "call_1");
  EXPECT_EQ(p.calls[1].name, "get_time");
  EXPECT_EQ(p.calls[1].arguments, R"({"zone":"Europe/Paris","nested":{"b":[1,2.5,null],"a":true}})");
}

TEST(ToolCallParserTest, EachCallIsReportedByThePushThatClosesIt) {
  const Parsed p = RunPieces({"Hi <tool_", "call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool", "_call>",
                              "\n<tool_call>{\"name\": \"g\", \"arguments\": {\"x\": 1}}</tool_call>"});
  EXPECT_EQ(p.content, "Hi ");
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.call_piece, (std::vector<size_t>{2, 3}));
  EXPECT_EQ(p.calls[0].arguments, "{}");
  EXPECT_EQ(p.calls[1].arguments, R"({"x":1})");
}

TEST(ToolCallParserTest, HoldsBackOnlyAPossibleOpeningTag) {
  ToolCallParser parser = Counting();
  std::string content;
  std::vector<GeneratedToolCall> calls;
  parser.Push("a < b and <tool", &content, &calls);
  EXPECT_EQ(content, "a < b and ");
  EXPECT_EQ(parser.held_bytes(), 5u);
  parser.Push("box> is not a call", &content, &calls);
  EXPECT_EQ(content, "a < b and <toolbox> is not a call");
  EXPECT_EQ(parser.held_bytes(), 0u);
  EXPECT_TRUE(calls.empty());
}

TEST(ToolCallParserTest, TextAfterACallIsContentWithItsLeadingWhitespace) {
  const Parsed p = RunEverySplit(kWeatherCall + "\n\nDone.");
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.content, "\n\nDone.");
}

TEST(ToolCallParserTest, MalformedBlocksPassThroughAsContent) {
  const std::vector<std::string> bodies = {
      "\n{\"name\": \"f\", \"arguments\": {\"a\": 1}\n",            // unbalanced
      "\nnot json\n",                                               //
      "\n[\"f\", {}]\n",                                            // not an object
      "\n{\"arguments\": {}}\n",                                    // no name
      "\n{\"name\": 7, \"arguments\": {}}\n",                       // name not a string
      "\n{\"name\": \"\", \"arguments\": {}}\n",                    // empty name
      "\n{\"name\": \"f\"}\n",                                      // no arguments
      "\n{\"name\": \"f\", \"arguments\": [1]}\n",                  // arguments not an object
      "\n{\"name\": \"f\", \"arguments\": \"{bad\"}\n",             // string arguments, not JSON
      "\n{\"name\": \"f\", \"arguments\": \"[1, 2]\"}\n",           // string arguments, not an object
      "\n{\"name\": \"f\", \"arguments\": {}} trailing\n",          // trailing text
      "\n" + std::string(100, '[') + std::string(100, ']') + "\n",  // nested too deep
  };
  for (const std::string& body : bodies) {
    const std::string block = "<tool_call>" + body + "</tool_call>";
    const Parsed p = RunEverySplit("Before " + block + " after");
    EXPECT_TRUE(p.calls.empty()) << body;
    EXPECT_EQ(p.content, "Before " + block + " after") << body;
  }
}

TEST(ToolCallParserTest, AMalformedBlockDoesNotSpoilTheNextOne) {
  const Parsed p = RunEverySplit("<tool_call>{oops}</tool_call>\n" + kWeatherCall);
  EXPECT_EQ(p.content, "<tool_call>{oops}</tool_call>\n");
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].name, "get_weather");
}

TEST(ToolCallParserTest, AnUnclosedBlockIsContentAtTheEnd) {
  const std::string text = "Sure. <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"ci";
  const Parsed p = RunEverySplit(text);
  EXPECT_TRUE(p.calls.empty());
  EXPECT_EQ(p.content, text);
  // A partial opening tag at the end is content too.
  EXPECT_EQ(RunEverySplit("x <tool_ca").content, "x <tool_ca");
  // After a call, an unclosed block still comes back whole (the newline that only separated it
  // from the call is not).
  const Parsed after = RunEverySplit(kWeatherCall + "\n<tool_call>{\"na");
  ASSERT_EQ(after.calls.size(), 1u);
  EXPECT_EQ(after.content, "<tool_call>{\"na");
}

TEST(ToolCallParserTest, ArgumentsGivenAsAJsonString) {
  const Parsed p = RunEverySplit(R"(<tool_call>
{"name": "f", "arguments": "{\"q\": \"a \\\"b\\\"\", \"n\": 2}"}
</tool_call>)");
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].arguments, R"({"q":"a \"b\"","n":2})");
}

TEST(ToolCallParserTest, NonAsciiArgumentsStayUtf8) {
  const Parsed p = RunEverySplit(
      "<tool_call>{\"name\": \"say\", \"arguments\": {\"text\": \"h\xc3\xa9 \\u00e9\"}}</tool_call>");
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].arguments, "{\"text\":\"h\xc3\xa9 \xc3\xa9\"}");
}

TEST(ToolCallParserTest, StrayClosingTagIsContent) {
  const Parsed p = RunEverySplit("a </tool_call> b");
  EXPECT_TRUE(p.calls.empty());
  EXPECT_EQ(p.content, "a </tool_call> b");
}

TEST(ToolCallParserTest, DefaultIdsAreCallPlus24Alphanumerics) {
  ToolCallParser parser;
  std::string content;
  std::vector<GeneratedToolCall> calls;
  parser.Push(kWeatherCall + kWeatherCall, &content, &calls);
  ASSERT_EQ(calls.size(), 2u);
  for (const GeneratedToolCall& c : calls) EXPECT_THAT(c.id, MatchesRegex("call_[A-Za-z0-9]{24}"));
  EXPECT_NE(calls[0].id, calls[1].id);
}

TEST(JsonNestingWithinTest, CountsBracketsOutsideStrings) {
  EXPECT_TRUE(JsonNestingWithin(R"({"a": [[1]]})", 3));
  EXPECT_FALSE(JsonNestingWithin(R"({"a": [[1]]})", 2));
  EXPECT_TRUE(JsonNestingWithin(R"({"a": "[[[[\"[[["})", 1));
  // An escaped backslash does not escape the closing quote after it.
  EXPECT_FALSE(JsonNestingWithin(R"({"a": "\\", "b": [1]})", 1));
  EXPECT_TRUE(JsonNestingWithin(R"({"a": "\\", "b": [1]})", 2));
}

}  // namespace
}  // namespace moe::router
