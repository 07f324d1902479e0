#include "common/transport/loopback/loopback_transport.h"

#include <thread>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace moe::transport {
namespace {

std::vector<std::byte> Bytes(std::initializer_list<int> values) {
  std::vector<std::byte> out;
  for (int v : values) out.push_back(static_cast<std::byte>(v));
  return out;
}

MessageTag Tag(MessageKind kind, uint64_t step, int32_t sender, uint32_t layer = 0) {
  return MessageTag{kind, step, layer, 0, sender};
}

TEST(LoopbackTransportTest, DeliversToThePeerInArrivalOrder) {
  LoopbackHub hub;
  LoopbackTransport* a = hub.Endpoint(0);
  LoopbackTransport* b = hub.Endpoint(1);
  ASSERT_TRUE(a->Send(1, Tag(MessageKind::kDispatch, 1, 0), Bytes({1, 2})).ok());
  ASSERT_TRUE(a->Send(1, Tag(MessageKind::kDispatch, 2, 0), Bytes({3})).ok());
  auto first = b->ReceiveAny(absl::Now() + absl::Seconds(1));
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->tag.step, 1u);
  EXPECT_EQ(first->payload, Bytes({1, 2}));
  auto second = b->ReceiveAny(absl::Now() + absl::Seconds(1));
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->tag.step, 2u);
}

TEST(LoopbackTransportTest, ReceiveTaggedSkipsOtherRoundsAndDropsStaleOnes) {
  LoopbackHub hub;
  LoopbackTransport* attention = hub.Endpoint(0);
  LoopbackTransport* expert = hub.Endpoint(5);
  ASSERT_TRUE(expert->Send(0, Tag(MessageKind::kCombine, 3, 5), Bytes({3})).ok());  // late
  ASSERT_TRUE(expert->Send(0, Tag(MessageKind::kCombine, 4, 5, 1), Bytes({41})).ok());
  ASSERT_TRUE(expert->Send(0, Tag(MessageKind::kCombine, 4, 5, 0), Bytes({40})).ok());
  auto got = attention->ReceiveTagged(Tag(MessageKind::kCombine, 4, 5, 0), absl::Now() + absl::Seconds(1));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->payload, Bytes({40}));
  EXPECT_EQ(attention->dropped_messages(), 1u);
  auto layer1 = attention->ReceiveTagged(Tag(MessageKind::kCombine, 4, 5, 1), absl::Now() + absl::Seconds(1));
  ASSERT_TRUE(layer1.ok());
  EXPECT_EQ(layer1->payload, Bytes({41}));
}

TEST(LoopbackTransportTest, ReceiveTimesOutWithUnavailable) {
  LoopbackHub hub;
  LoopbackTransport* a = hub.Endpoint(0);
  auto got = a->ReceiveTagged(Tag(MessageKind::kCombine, 1, 9), absl::Now() + absl::Milliseconds(50));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable);
  auto any = a->ReceiveAny(absl::Now() + absl::Milliseconds(50));
  EXPECT_EQ(any.status().code(), absl::StatusCode::kUnavailable);
}

TEST(LoopbackTransportTest, WaitsForALateMessage) {
  LoopbackHub hub;
  LoopbackTransport* a = hub.Endpoint(0);
  LoopbackTransport* b = hub.Endpoint(1);
  std::thread sender([b] {
    absl::SleepFor(absl::Milliseconds(20));
    ASSERT_TRUE(b->Send(0, Tag(MessageKind::kCombine, 7, 1), Bytes({7})).ok());
  });
  auto got = a->ReceiveTagged(Tag(MessageKind::kCombine, 7, 1), absl::Now() + absl::Seconds(10));
  sender.join();
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->payload, Bytes({7}));
}

TEST(LoopbackTransportTest, DisconnectedPeerIsUnavailableAndItsWaitersAreCancelled) {
  LoopbackHub hub;
  LoopbackTransport* a = hub.Endpoint(0);
  LoopbackTransport* b = hub.Endpoint(1);
  std::thread waiter([b] {
    auto got = b->ReceiveAny(absl::Now() + absl::Seconds(30));
    EXPECT_EQ(got.status().code(), absl::StatusCode::kCancelled);
  });
  hub.Disconnect(1);
  waiter.join();
  EXPECT_EQ(a->Send(1, Tag(MessageKind::kDispatch, 1, 0), Bytes({1})).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(a->Send(42, Tag(MessageKind::kDispatch, 1, 0), Bytes({1})).code(),
            absl::StatusCode::kUnavailable);
}

TEST(LoopbackTransportTest, RejectsASpoofedSender) {
  LoopbackHub hub;
  LoopbackTransport* a = hub.Endpoint(0);
  hub.Endpoint(1);
  EXPECT_EQ(a->Send(1, Tag(MessageKind::kDispatch, 1, 3), Bytes({1})).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moe::transport
