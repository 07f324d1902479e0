#include "services/router/stop_strings.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace moe::router {
namespace {

// Feeds `pieces` and returns the emitted text plus "|<index>" on a match.
std::string Feed(const std::vector<std::string>& stops, const std::vector<std::string>& pieces) {
  StopStringMatcher m(stops);
  std::string out;
  for (const std::string& p : pieces) {
    StopStringMatcher::Result r = m.Push(p);
    out += r.text;
    if (r.matched.has_value()) return out + "|" + std::to_string(*r.matched);
  }
  return out + m.Flush();
}

TEST(StopStringMatcherTest, MatchesAcrossPieces) {
  EXPECT_EQ(Feed({"STOP"}, {"hello S", "T", "OP world"}), "hello |0");
}

TEST(StopStringMatcherTest, HoldsBackOnlyPossiblePrefixes) {
  StopStringMatcher m({"STOP"});
  EXPECT_EQ(m.Push("abc ST").text, "abc ");
  EXPECT_EQ(m.held_bytes(), 2u);
  EXPECT_EQ(m.Push("x").text, "STx");
  EXPECT_EQ(m.held_bytes(), 0u);
}

TEST(StopStringMatcherTest, FlushReturnsHeldTextWhenNoMatch) {
  EXPECT_EQ(Feed({"STOP"}, {"a", "ST", "O"}), "aSTO");
}

TEST(StopStringMatcherTest, EarliestEndingMatchWinsAmongOverlappingCandidates) {
  // "bc" ends before "abcd" could complete.
  EXPECT_EQ(Feed({"abcd", "bc"}, {"xab", "cd"}), "xa|1");
  // Same end: the longer one.
  EXPECT_EQ(Feed({"c", "abc"}, {"xabc"}), "x|1");
}

TEST(StopStringMatcherTest, ResultDoesNotDependOnPieceBoundaries) {
  const std::vector<std::string> stops = {"\n\n", "END", "ab"};
  const std::string text = "xyz a\nEN\n\nab";
  const std::string whole = Feed(stops, {text});
  EXPECT_EQ(whole, "xyz a\nEN|0");
  for (size_t cut = 1; cut < text.size(); ++cut) {
    EXPECT_EQ(Feed(stops, {text.substr(0, cut), text.substr(cut)}), whole) << cut;
  }
  std::vector<std::string> bytes;
  for (char c : text) bytes.push_back(std::string(1, c));
  EXPECT_EQ(Feed(stops, bytes), whole);
}

TEST(StopStringMatcherTest, MatchesMultiByteUtf8StopStrings) {
  // "日本" split over pieces at character boundaries; the held text starts on a character.
  EXPECT_EQ(Feed({"日本"}, {"こんにちは日", "本語"}), "こんにちは|0");
  StopStringMatcher m({"日本"});
  EXPECT_EQ(m.Push("語日").text, "語");
  EXPECT_EQ(m.Flush(), "日");
}

TEST(StopStringMatcherTest, IgnoresInputAfterMatch) {
  StopStringMatcher m({"x"});
  EXPECT_TRUE(m.Push("ax").matched.has_value());
  EXPECT_EQ(m.Push("more").text, "");
  EXPECT_TRUE(m.matched());
}

TEST(StopStringMatcherTest, NoStopsPassesTextThrough) {
  EXPECT_EQ(Feed({}, {"a", "b"}), "ab");
}

}  // namespace
}  // namespace moe::router
