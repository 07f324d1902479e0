#include "common/tokenizer/incremental_detokenizer.h"

#include <string>
#include <vector>

#include "common/tokenizer/byte_level.h"
#include "common/tokenizer/utf8.h"
#include "gtest/gtest.h"
#include "tests/common/tokenizer/qwen3_test_tokenizer.h"

namespace moe::tokenizer {
namespace {

int32_t ByteToken(uint8_t byte) {
  return *Qwen3().TokenToId(ByteLevelAlphabet::Get().Encode(byte));
}

// Feeds `ids` one at a time; returns every Add() output followed by the Flush() output.
std::vector<std::string> Stream(const std::vector<int32_t>& ids, bool skip_special = false) {
  IncrementalDetokenizer detok(Qwen3(), skip_special);
  std::vector<std::string> chunks;
  for (int32_t id : ids) chunks.push_back(detok.Add(id));
  chunks.push_back(detok.Flush());
  return chunks;
}

TEST(IncrementalDetokenizerTest, HoldsEmojiBytesUntilTheCharacterCompletes) {
  // U+1F600 is F0 9F 98 80, here as four single-byte tokens.
  const std::vector<std::string> chunks =
      Stream({ByteToken(0xF0), ByteToken(0x9F), ByteToken(0x98), ByteToken(0x80)});
  EXPECT_EQ(chunks, (std::vector<std::string>{"", "", "", "\U0001F600", ""}));
}

TEST(IncrementalDetokenizerTest, StreamsEmojiAndCjkSplitAcrossTokensLikeDecode) {
  const std::string text = "你好😀世界 👨‍👩‍👧 🇯🇵 ok 𠀀";
  auto ids = Qwen3().Encode(text);
  ASSERT_TRUE(ids.ok());
  const std::vector<std::string> chunks = Stream(*ids);
  std::string joined;
  int empty_chunks = 0;
  for (const std::string& chunk : chunks) {
    EXPECT_TRUE(ValidateUtf8(chunk).ok()) << "a chunk holds a partial character";
    empty_chunks += chunk.empty();
    joined += chunk;
  }
  EXPECT_EQ(joined, text);
  EXPECT_EQ(joined, Qwen3().Decode(*ids));
  EXPECT_GT(empty_chunks, 1);  // some characters really were split across tokens
}

TEST(IncrementalDetokenizerTest, FlushReplacesABrokenTail) {
  IncrementalDetokenizer detok(Qwen3());
  EXPECT_EQ(detok.Add(9707), "Hello");
  EXPECT_EQ(detok.Add(ByteToken(0xF0)), "");
  EXPECT_EQ(detok.pending_bytes(), 1u);
  EXPECT_EQ(detok.Flush(), "\uFFFD");
  EXPECT_EQ(detok.pending_bytes(), 0u);
}

TEST(IncrementalDetokenizerTest, EmitsReplacementAsSoonAsASequenceBreaks) {
  IncrementalDetokenizer detok(Qwen3());
  EXPECT_EQ(detok.Add(ByteToken(0xE4)), "");
  EXPECT_EQ(detok.Add(*Qwen3().TokenToId("A")), "\uFFFDA");
  EXPECT_EQ(detok.Flush(), "");
}

TEST(IncrementalDetokenizerTest, SkipsSpecialTokensWhenAsked) {
  const std::vector<int32_t> ids = {151644, 9707, 151645, 151667};
  const std::vector<std::string> kept = Stream(ids);
  EXPECT_EQ(kept, (std::vector<std::string>{"<|im_start|>", "Hello", "<|im_end|>", "<think>", ""}));
  const std::vector<std::string> skipped = Stream(ids, /*skip_special=*/true);
  EXPECT_EQ(skipped, (std::vector<std::string>{"", "Hello", "", "<think>", ""}));
}

}  // namespace
}  // namespace moe::tokenizer
