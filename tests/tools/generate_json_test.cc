// The comparison of `moectl generate --json` outputs that the cluster tests use: what the
// generation decides (tokens, logprobs, the whole text) must match; which line a piece of text is
// printed on must not matter (through a router it depends on how the tokens were batched into
// messages, generate_json.h).
#include "tests/tools/generate_json.h"

#include "gtest/gtest.h"

namespace moe::testing {
namespace {

// Four tokens of a real run (tiny model, "Hello"): embedded mode, each line its token's text.
constexpr char kEmbedded[] =
    R"({"id":137920,"text":" встреч","logprob":-1.8609114249557024e-11}
{"id":108488,"text":"出场","logprob":-1.4210854715202004e-14}
{"id":89815,"text":"REQUIRED","logprob":-0.00014244050544220954}
{"id":20937,"text":".br","logprob":-1.1055263371417823e-09}
{"finish_reason":"length","usage":{"prompt_tokens":1,"completion_tokens":4},"prompt_ids":[9707]}
)";
// The same tokens through a router, where the attention worker sent them two to a message: each
// message's text is on its last token.
constexpr char kRouterTwoPerMessage[] =
    R"({"id":137920,"text":"","logprob":-1.8609114249557024e-11}
{"id":108488,"text":" встреч出场","logprob":-1.4210854715202004e-14}
{"id":89815,"text":"","logprob":-0.00014244050544220954}
{"id":20937,"text":"REQUIRED.br","logprob":-1.1055263371417823e-09}
{"finish_reason":"length","usage":{"prompt_tokens":1,"completion_tokens":4},"timings":{"queue_seconds":0.0,"time_to_first_token_seconds":0.1,"total_seconds":0.2}}
)";

GenerateJson Parse(std::string_view out) {
  absl::StatusOr<GenerateJson> parsed = ParseGenerateJson(out);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return parsed.ok() ? *parsed : GenerateJson();
}

TEST(GenerateJsonTest, TokensBatchedIntoMessagesCompareEqualToEmbeddedMode) {
  const GenerateJson embedded = Parse(kEmbedded), router = Parse(kRouterTwoPerMessage);
  ASSERT_EQ(embedded.tokens.size(), 4u);
  EXPECT_EQ(FirstTokenDifference(router, embedded), -1);
  EXPECT_EQ(router.text, " встреч出场REQUIRED.br");
  EXPECT_EQ(router.text, embedded.text);
  EXPECT_EQ(embedded.tokens[0], R"({"id":137920,"logprob":-1.8609114249557024e-11})");
}

TEST(GenerateJsonTest, ADifferentIdLogprobOrTextIsSeen) {
  const GenerateJson embedded = Parse(kEmbedded);
  std::string other_id = kRouterTwoPerMessage;
  other_id.replace(other_id.find("89815"), 5, "89816");
  EXPECT_EQ(FirstTokenDifference(Parse(other_id), embedded), 2);
  std::string other_logprob = kRouterTwoPerMessage;
  other_logprob.replace(other_logprob.find("-1.4210854715202004e-14"), 23, "-1.4210856e-14");
  EXPECT_EQ(FirstTokenDifference(Parse(other_logprob), embedded), 1);
  std::string other_text = kRouterTwoPerMessage;
  other_text.replace(other_text.find("REQUIRED"), 8, "required");
  const GenerateJson changed = Parse(other_text);
  EXPECT_EQ(FirstTokenDifference(changed, embedded), -1);
  EXPECT_NE(changed.text, embedded.text);
  // A missing token is a difference at its index.
  const std::string_view all = kEmbedded;
  const std::string_view shorter = all.substr(0, all.find(R"({"id":20937)"));
  EXPECT_EQ(FirstTokenDifference(Parse(shorter), embedded), 3);
}

TEST(GenerateJsonTest, EmbeddedModesTrailingTextAndTopLogprobsCount) {
  // Embedded mode prints the detokenizer's held-back tail as a line of its own; a router puts it
  // on the last token.
  const GenerateJson embedded = Parse(
      R"({"id":5,"text":"a","logprob":-1.0,"top_logprobs":[{"id":5,"logprob":-1.0},{"id":6,"logprob":-2.0}]}
{"text":"b"}
)");
  const GenerateJson router = Parse(
      R"({"id":5,"text":"ab","logprob":-1.0,"top_logprobs":[{"id":5,"logprob":-1.0},{"id":6,"logprob":-2.0}]}
)");
  EXPECT_EQ(embedded.tokens.size(), 1u);
  EXPECT_EQ(FirstTokenDifference(router, embedded), -1);
  EXPECT_EQ(router.text, embedded.text);
  const GenerateJson other_top = Parse(
      R"({"id":5,"text":"ab","logprob":-1.0,"top_logprobs":[{"id":5,"logprob":-1.0},{"id":7,"logprob":-2.0}]}
)");
  EXPECT_EQ(FirstTokenDifference(other_top, embedded), 0);
}

TEST(GenerateJsonTest, ALineThatIsNotAnObjectIsRefusedNamingIt) {
  const absl::StatusOr<GenerateJson> parsed = ParseGenerateJson("{\"id\":1,\"text\":\"a\"}\nmoectl: oops\n");
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(parsed.status().message().find("line 2"), std::string::npos) << parsed.status();
  const absl::StatusOr<GenerateJson> bad_text = ParseGenerateJson("{\"id\":1,\"text\":3}\n");
  ASSERT_FALSE(bad_text.ok());
  EXPECT_NE(bad_text.status().message().find("\"text\""), std::string::npos) << bad_text.status();
}

}  // namespace
}  // namespace moe::testing
