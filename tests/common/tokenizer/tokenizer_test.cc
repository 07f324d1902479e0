#include "common/tokenizer/tokenizer.h"

#include <string>
#include <vector>

#include "common/tokenizer/byte_level.h"
#include "common/tokenizer/qwen3_tokenizer_files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/tokenizer/qwen3_test_tokenizer.h"

namespace moe::tokenizer {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::vector<int32_t> EncodeOk(std::string_view text) {
  auto ids = Qwen3().Encode(text);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

TEST(TokenizerTest, EncodesHelloWorldToKnownIds) {
  EXPECT_THAT(EncodeOk("Hello world"), ElementsAre(9707, 1879));
  EXPECT_THAT(EncodeOk(" Hello world"), ElementsAre(21927, 1879));
}

TEST(TokenizerTest, EncodesEmptyTextToNothing) {
  EXPECT_TRUE(EncodeOk("").empty());
}

TEST(TokenizerTest, SplitsDigitsOnePerToken) {
  // '0'..'9' are ids 15..24.
  EXPECT_THAT(EncodeOk("12345"), ElementsAre(16, 17, 18, 19, 20));
  EXPECT_THAT(EncodeOk("2024"), ElementsAre(17, 15, 17, 19));
}

TEST(TokenizerTest, MapsSpecialTokenTextInProseToItsId) {
  EXPECT_THAT(EncodeOk("<|im_start|>user\nHi 12345<|im_end|>"),
              ElementsAre(151644, 872, 198, 13048, 220, 16, 17, 18, 19, 20, 151645));
}

TEST(TokenizerTest, MatchesNonSpecialAddedTokensToo) {
  EXPECT_THAT(EncodeOk("<think></think>"), ElementsAre(151667, 151668));
  EXPECT_THAT(EncodeOk("<tool_call>"), ElementsAre(151657));
}

TEST(TokenizerTest, NormalizesToNfcBeforeSplitting) {
  EXPECT_EQ(EncodeOk("Cafe\u0301"), EncodeOk("Caf\u00e9"));
  EXPECT_EQ(Qwen3().Decode(EncodeOk("Cafe\u0301")), "Caf\u00e9");
}

TEST(TokenizerTest, TreatsByteOrderMarkAsNonSpaceLikeHuggingFace) {
  // U+FEFF is not \s for Oniguruma (HF tokenizers), Python regex or PCRE2: the split is
  // ["x", " ", " \uFEFF"]. The JS oracle's \s includes U+FEFF and differs here (see
  // tests/oracle/tokenizer/README.md).
  EXPECT_THAT(EncodeOk("x  \uFEFF"), ElementsAre(87, 220, 75780));
}

TEST(TokenizerTest, RejectsInvalidUtf8) {
  for (std::string bad : {std::string("abc\xff"), std::string("\xc3"), std::string("\xed\xa0\x80"),
                          std::string("\xc0\xaf"), std::string("\xf4\x90\x80\x80")}) {
    auto ids = Qwen3().Encode(bad);
    ASSERT_FALSE(ids.ok());
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(ids.status().message()), HasSubstr("invalid UTF-8"));
  }
}

TEST(TokenizerTest, EncodesNulBytesAsOrdinaryText) {
  const std::string text("a\0b", 3);
  EXPECT_EQ(Qwen3().Decode(EncodeOk(text)), text);
}

TEST(TokenizerTest, DecodesSpecialTokensUnlessSkipped) {
  const std::vector<int32_t> ids = {151644, 872, 198, 13048, 151645};
  EXPECT_EQ(Qwen3().Decode(ids), "<|im_start|>user\nHi<|im_end|>");
  EXPECT_EQ(Qwen3().Decode(ids, /*skip_special_tokens=*/true), "user\nHi");
}

TEST(TokenizerTest, KeepsThinkTagsWhenSkippingSpecialTokens) {
  const std::vector<int32_t> ids = {151667, 9707, 151668};
  EXPECT_EQ(Qwen3().Decode(ids, /*skip_special_tokens=*/true), "<think>Hello</think>");
}

TEST(TokenizerTest, DecodeReplacesBrokenUtf8WithReplacementCharacter) {
  const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::Get();
  const int32_t f0 = *Qwen3().TokenToId(alphabet.Encode(0xF0));
  const int32_t x9f = *Qwen3().TokenToId(alphabet.Encode(0x9F));
  const int32_t a = *Qwen3().TokenToId("A");
  EXPECT_EQ(Qwen3().Decode(std::vector<int32_t>{f0}), "\uFFFD");
  EXPECT_EQ(Qwen3().Decode(std::vector<int32_t>{f0, x9f, a}), "\uFFFDA");  // one maximal subpart
  EXPECT_EQ(Qwen3().Decode(std::vector<int32_t>{x9f, x9f}), "\uFFFD\uFFFD");
}

TEST(TokenizerTest, DecodeSkipsInvalidIdsAndValidateIdsNamesThem) {
  EXPECT_EQ(Qwen3().Decode(std::vector<int32_t>{9707, -1, 151669, 1879}), "Hello world");
  const absl::Status status = Qwen3().ValidateIds(std::vector<int32_t>{9707, 151669});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("token id 151669 at position 1"));
  EXPECT_TRUE(Qwen3().ValidateIds(std::vector<int32_t>{0, 151668}).ok());
}

TEST(TokenizerTest, ExposesVocabulary) {
  EXPECT_EQ(Qwen3().vocab_size(), 151669);
  EXPECT_EQ(Qwen3().TokenToId("\xC4\xA0Hello"), 21927);  // "ĠHello"
  EXPECT_EQ(Qwen3().TokenToId("<|im_end|>"), 151645);
  EXPECT_EQ(Qwen3().TokenToId("no such token at all"), std::nullopt);
  EXPECT_EQ(Qwen3().IdToToken(9707), "Hello");
  EXPECT_EQ(Qwen3().IdToToken(151667), "<think>");
  EXPECT_EQ(Qwen3().IdToToken(151669), std::nullopt);
  EXPECT_TRUE(Qwen3().IsSpecial(151643));
  EXPECT_TRUE(Qwen3().IsSpecial(151645));
  EXPECT_FALSE(Qwen3().IsSpecial(151667));
  EXPECT_FALSE(Qwen3().IsSpecial(9707));
  EXPECT_FALSE(Qwen3().IsSpecial(-5));
}

TEST(TokenizerTest, EncodesVeryLongPiecesQuicklyAndLosslessly) {
  const std::string word(100000, 'a');  // one regex piece: BPE must not be quadratic
  EXPECT_EQ(Qwen3().Decode(EncodeOk(word)), word);
  const std::string spaces(50000, ' ');
  EXPECT_EQ(Qwen3().Decode(EncodeOk(spaces + "x")), spaces + "x");
}

TEST(TokenizerTest, GivesTheSameIdsFromCacheAsFirstTime) {
  const std::string text = "repeated words repeated words repeated";
  const std::vector<int32_t> first = EncodeOk(text);
  EXPECT_EQ(EncodeOk(text), first);
  EXPECT_EQ(Qwen3().Decode(first), text);
}

// A tiny byte-level BPE model: the 256 byte tokens, "ab" and "abc".
std::string TinyTokenizerJson(const nlohmann::json& merges) {
  nlohmann::json vocab = nlohmann::json::object();
  const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::Get();
  for (int b = 0; b < 256; ++b) vocab[std::string(alphabet.Encode(static_cast<uint8_t>(b)))] = b;
  vocab["ab"] = 256;
  vocab["abc"] = 257;
  nlohmann::json root = {
      {"normalizer", {{"type", "NFC"}}},
      {"pre_tokenizer", {{"type", "Split"}, {"pattern", {{"Regex", "\\s+|\\S+"}}}, {"behavior", "Isolated"}}},
      {"added_tokens", {{{"id", 300}, {"content", "<eos>"}, {"special", true}}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
  return root.dump();
}

TEST(TokenizerTest, AcceptsMergesAsStringsOrPairs) {
  for (const nlohmann::json& merges :
       {nlohmann::json::array({"a b", "ab c"}),
        nlohmann::json::array({nlohmann::json::array({"a", "b"}), nlohmann::json::array({"ab", "c"})})}) {
    auto tok = Tokenizer::FromJson(TinyTokenizerJson(merges));
    ASSERT_TRUE(tok.ok()) << tok.status();
    auto ids = (*tok)->Encode("abc ab<eos>");
    ASSERT_TRUE(ids.ok());
    EXPECT_THAT(*ids, ElementsAre(257, ' ', 256, 300));
    EXPECT_EQ((*tok)->vocab_size(), 301);
    EXPECT_FALSE((*tok)->IsValidId(299));  // a hole between the vocab and the added token
  }
}

TEST(TokenizerTest, RejectsMalformedTokenizerJson) {
  EXPECT_EQ(Tokenizer::FromJson("not json").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Tokenizer::FromJson("{}").status().code(), absl::StatusCode::kInvalidArgument);
  auto bad_merge = Tokenizer::FromJson(TinyTokenizerJson(nlohmann::json::array({"a zz"})));
  EXPECT_EQ(bad_merge.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_merge.status().message()), HasSubstr("not in the vocab"));
  auto three_parts = Tokenizer::FromJson(TinyTokenizerJson(nlohmann::json::array({"a b c"})));
  EXPECT_EQ(three_parts.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TokenizerTest, FromModelDirReportsMissingFile) {
  auto tok = Tokenizer::FromModelDir("/nonexistent/model/dir");
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
}

TEST(Qwen3TokenizerFilesTest, EmbedsTheRealFiles) {
  auto json = EmbeddedQwen3TokenizerJson();
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_EQ(json->size(), 11422654u);
  EXPECT_TRUE(json->starts_with("{"));
  const std::string_view config = EmbeddedQwen3TokenizerConfigJson();
  EXPECT_EQ(config.size(), 9675u);
  EXPECT_NE(config.find("enable_thinking"), std::string_view::npos);
  EXPECT_TRUE(nlohmann::json::accept(config));
}

}  // namespace
}  // namespace moe::tokenizer
