#include "common/transport/moe_message.h"

#include <algorithm>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace moe::transport {
namespace {

TEST(MoeMessageTest, RoundTripsGroupsAndRows) {
  const std::vector<ExpertGroup> groups = {{3, 2}, {17, 1}};
  std::vector<std::byte> payload;
  bf16* rows = EncodeMoeMessageHeader(4, groups, &payload);
  for (int i = 0; i < 12; ++i) rows[i] = FloatToBF16(static_cast<float>(i));
  EXPECT_EQ(payload.size(), MoeMessageSize(4, 2, 3));

  auto view = DecodeMoeMessage(payload);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->hidden, 4);
  ASSERT_EQ(view->groups.size(), 2u);
  EXPECT_EQ(view->groups[1].expert, 17);
  EXPECT_EQ(view->groups[1].num_rows, 1);
  EXPECT_EQ(view->total_rows, 3);
  EXPECT_EQ(BF16ToFloat(view->rows[11]), 11.0f);
}

TEST(MoeMessageTest, EmptyMessageIsValid) {
  std::vector<std::byte> payload;
  EncodeMoeMessageHeader(2048, {}, &payload);
  auto view = DecodeMoeMessage(payload);
  ASSERT_TRUE(view.ok());
  EXPECT_EQ(view->total_rows, 0);
}

TEST(MoeMessageTest, RejectsEveryTruncationWithoutReadingPastTheEnd) {
  const std::vector<ExpertGroup> groups = {{0, 2}, {1, 3}};
  std::vector<std::byte> payload;
  EncodeMoeMessageHeader(8, groups, &payload);
  for (size_t size = 0; size < payload.size(); ++size) {
    std::vector<std::byte> cut(payload.begin(), payload.begin() + static_cast<long>(size));
    EXPECT_FALSE(DecodeMoeMessage(cut).ok()) << size;
  }
}

TEST(MoeMessageTest, RejectsBadMagicAndHugeGroupCounts) {
  std::vector<std::byte> payload;
  EncodeMoeMessageHeader(8, {}, &payload);
  auto bad_magic = payload;
  bad_magic[0] = std::byte{0};
  EXPECT_FALSE(DecodeMoeMessage(bad_magic).ok());
  auto huge = payload;
  huge[12] = huge[13] = huge[14] = huge[15] = std::byte{0xff};  // num_groups = 2^32 - 1
  EXPECT_FALSE(DecodeMoeMessage(huge).ok());
}

TEST(MoeMessageTest, VersionOneHasNoExpertTime) {
  std::vector<std::byte> payload;
  EncodeMoeMessageHeader(8, {}, &payload);
  auto view = DecodeMoeMessage(payload);
  ASSERT_TRUE(view.ok());
  EXPECT_FALSE(view->expert_time.has_value());
}

TEST(MoeMessageTest, StampedExpertTimeRoundTripsWithTheRowsUnchanged) {
  const std::vector<ExpertGroup> groups = {{3, 2}, {17, 1}};
  std::vector<std::byte> payload;
  bf16* rows = EncodeMoeMessageHeader(4, groups, &payload);
  for (int i = 0; i < 12; ++i) rows[i] = FloatToBF16(static_cast<float>(i));
  ASSERT_TRUE(StampExpertTime(absl::Microseconds(1234), &payload).ok());
  EXPECT_EQ(payload.size(), MoeMessageSize(4, 2, 3) + kExpertTimeBytes);
  EXPECT_LE(payload.size(), MaxMoeMessageSize(4, 2, 2, 2));  // the size bound admits the stamp

  auto view = DecodeMoeMessage(payload);
  ASSERT_TRUE(view.ok()) << view.status();
  ASSERT_TRUE(view->expert_time.has_value());
  EXPECT_EQ(*view->expert_time, absl::Microseconds(1234));
  EXPECT_EQ(view->total_rows, 3);
  EXPECT_EQ(BF16ToFloat(view->rows[11]), 11.0f);

  // Once only: a stamped message is not version 1 any more, and stays as it is.
  const std::vector<std::byte> before = payload;
  EXPECT_FALSE(StampExpertTime(absl::Seconds(1), &payload).ok());
  EXPECT_EQ(payload, before);
  // A negative time (a clock step) is stamped as zero.
  std::vector<std::byte> empty;
  EncodeMoeMessageHeader(8, {}, &empty);
  ASSERT_TRUE(StampExpertTime(-absl::Seconds(1), &empty).ok());
  EXPECT_EQ(DecodeMoeMessage(empty)->expert_time, absl::ZeroDuration());
}

TEST(MoeMessageTest, StampingNeverReallocatesAndAReusedBufferEncodesTheSameBytes) {
  const std::vector<ExpertGroup> groups = {{5, 3}, {9, 2}};
  auto fill = [](bf16* rows) {
    for (int i = 0; i < 5 * 16; ++i) rows[i] = FloatToBF16(static_cast<float>(i) * 0.5f);
  };
  std::vector<std::byte> fresh;
  fill(EncodeMoeMessageHeader(16, groups, &fresh));
  EXPECT_GE(fresh.capacity(), fresh.size() + kExpertTimeBytes);
  const std::byte* data = fresh.data();
  ASSERT_TRUE(StampExpertTime(absl::Nanoseconds(77), &fresh).ok());
  EXPECT_EQ(fresh.data(), data);  // the trailer went into the reserved room, in place

  // A buffer that carried a larger, stamped message before encodes the same bytes, in place.
  std::vector<std::byte> reused;
  EncodeMoeMessageHeader(16, std::vector<ExpertGroup>{{1, 40}}, &reused);
  ASSERT_TRUE(StampExpertTime(absl::Seconds(2), &reused).ok());
  std::fill(reused.begin(), reused.end(), std::byte{0xab});
  data = reused.data();
  fill(EncodeMoeMessageHeader(16, groups, &reused));
  ASSERT_TRUE(StampExpertTime(absl::Nanoseconds(77), &reused).ok());
  EXPECT_EQ(reused.data(), data);
  EXPECT_EQ(reused, fresh);
}

TEST(MoeMessageTest, RejectsEveryTruncationOfAStampedMessage) {
  const std::vector<ExpertGroup> groups = {{0, 2}, {1, 3}};
  std::vector<std::byte> payload;
  EncodeMoeMessageHeader(8, groups, &payload);
  ASSERT_TRUE(StampExpertTime(absl::Milliseconds(3), &payload).ok());
  for (size_t size = 0; size < payload.size(); ++size) {
    std::vector<std::byte> cut(payload.begin(), payload.begin() + static_cast<long>(size));
    EXPECT_FALSE(DecodeMoeMessage(cut).ok()) << size;
  }
  // A stamp past int64 nanoseconds, and an unknown version, are refused.
  auto huge = payload;
  huge[huge.size() - 1] = std::byte{0xff};
  EXPECT_FALSE(DecodeMoeMessage(huge).ok());
  auto version3 = payload;
  version3[4] = std::byte{3};
  EXPECT_FALSE(DecodeMoeMessage(version3).ok());
  // Garbage is not stamped.
  std::vector<std::byte> garbage(5, std::byte{1});
  EXPECT_FALSE(StampExpertTime(absl::Seconds(1), &garbage).ok());
  EXPECT_EQ(garbage.size(), 5u);
}

}  // namespace
}  // namespace moe::transport
