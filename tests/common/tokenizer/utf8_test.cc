#include "common/tokenizer/utf8.h"

#include <string>

#include "gtest/gtest.h"

namespace moe::tokenizer {
namespace {

std::string Replace(std::string_view bytes) {
  std::string out;
  EXPECT_EQ(AppendUtf8Replacing(bytes, /*hold_incomplete_tail=*/false, &out), bytes.size());
  return out;
}

TEST(Utf8Test, AcceptsWellFormedText) {
  EXPECT_TRUE(ValidateUtf8("").ok());
  EXPECT_TRUE(ValidateUtf8("plain ascii text, long enough for the fast path").ok());
  EXPECT_TRUE(ValidateUtf8("\u00e9\u4e2d\U0001F600\U0010FFFF").ok());
}

TEST(Utf8Test, RejectsIllFormedTextWithOffset) {
  const absl::Status status = ValidateUtf8("abcdefghij\x80");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "invalid UTF-8 at byte offset 10");
  EXPECT_FALSE(ValidateUtf8("\xe4\xb8").ok());          // truncated
  EXPECT_FALSE(ValidateUtf8("\xe0\x80\x80").ok());      // overlong
  EXPECT_FALSE(ValidateUtf8("\xed\xbf\xbf").ok());      // surrogate
  EXPECT_FALSE(ValidateUtf8("\xf5\x80\x80\x80").ok());  // above U+10FFFF
}

TEST(Utf8Test, ReplacesMaximalSubpartsLikePython) {
  // Expected values from Python: bytes.decode("utf-8", errors="replace").
  EXPECT_EQ(Replace("a\xffz"), "a\uFFFDz");
  EXPECT_EQ(Replace("\xe4\xb8"
                    "A"),
            "\uFFFDA");                                      // b'\xe4\xb8A' -> '\ufffdA'
  EXPECT_EQ(Replace("\xe0\x80\x80"), "\uFFFD\uFFFD\uFFFD");  // E0 80: lead alone is the subpart
  EXPECT_EQ(Replace("\xf0\x9f\x98"), "\uFFFD");              // truncated emoji: one U+FFFD
  EXPECT_EQ(Replace("\xed\xa0\x80"), "\uFFFD\uFFFD\uFFFD");
  EXPECT_EQ(Replace("ok \xe4\xb8\xad"), "ok \u4e2d");
}

TEST(Utf8Test, HoldsBackAnUnfinishedTail) {
  std::string out;
  EXPECT_EQ(AppendUtf8Replacing("ab\xf0\x9f\x98", /*hold_incomplete_tail=*/true, &out), 2u);
  EXPECT_EQ(out, "ab");
  out.clear();
  EXPECT_EQ(AppendUtf8Replacing("\xf0\x41", /*hold_incomplete_tail=*/true, &out), 2u);
  EXPECT_EQ(out, "\uFFFDA");
}

}  // namespace
}  // namespace moe::tokenizer
