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

TEST(LoopbackTransportTest, SendBufferHandsTheBufferOverAndGivesARecycledOneBack) {
  LoopbackHub hub;
  LoopbackTransport* a = hub.Endpoint(0);
  LoopbackTransport* b = hub.Endpoint(1);
  std::vector<std::byte> payload = Bytes({1, 2, 3, 4});
  const std::byte* sent_data = payload.data();
  // Nothing recycled yet: the sender gets an empty buffer back.
  ASSERT_TRUE(a->SendBuffer(1, Tag(MessageKind::kDispatch, 1, 0), &payload).ok());
  EXPECT_EQ(payload.capacity(), 0u);
  auto first = b->ReceiveAny(absl::Now() + absl::Seconds(1));
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->payload, Bytes({1, 2, 3, 4}));
  EXPECT_EQ(first->payload.data(), sent_data);  // handed over, not copied

  // The receiver recycles it; the next SendBuffer (from any endpoint) gets that very buffer.
  b->Recycle(std::move(first->payload));
  EXPECT_EQ(hub.pooled_buffers(), 1u);
  std::vector<std::byte> answer = Bytes({9, 8});
  ASSERT_TRUE(b->SendBuffer(0, Tag(MessageKind::kCombine, 1, 1), &answer).ok());
  EXPECT_EQ(answer.data(), sent_data);
  EXPECT_EQ(hub.pooled_buffers(), 0u);
  auto second = a->ReceiveAny(absl::Now() + absl::Seconds(1));
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->payload, Bytes({9, 8}));

  // Send still copies and leaves the caller's bytes alone.
  const std::vector<std::byte> kept = Bytes({5, 6});
  ASSERT_TRUE(a->Send(1, Tag(MessageKind::kDispatch, 2, 0), kept).ok());
  auto third = b->ReceiveAny(absl::Now() + absl::Seconds(1));
  ASSERT_TRUE(third.ok());
  EXPECT_NE(third->payload.data(), kept.data());
  EXPECT_EQ(third->payload, kept);
}

TEST(LoopbackTransportTest, SendBufferLeavesThePayloadAloneOnAnError) {
  LoopbackHub hub;
  LoopbackTransport* a = hub.Endpoint(0);
  hub.Endpoint(1);
  std::vector<std::byte> payload = Bytes({7, 7, 7});
  EXPECT_EQ(a->SendBuffer(1, Tag(MessageKind::kDispatch, 1, 3), &payload).code(),
            absl::StatusCode::kInvalidArgument);  // spoofed sender
  EXPECT_EQ(payload, Bytes({7, 7, 7}));
  hub.Disconnect(1);
  EXPECT_EQ(a->SendBuffer(1, Tag(MessageKind::kDispatch, 1, 0), &payload).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(payload, Bytes({7, 7, 7}));
}

TEST(LoopbackTransportTest, ThePoolKeepsABoundedNumberOfNonEmptyBuffers) {
  LoopbackHub hub;
  LoopbackTransport* a = hub.Endpoint(0);
  a->Recycle(std::vector<std::byte>());  // nothing to keep
  EXPECT_EQ(hub.pooled_buffers(), 0u);
  for (size_t i = 0; i < LoopbackHub::kMaxPooledBuffers + 5; ++i) a->Recycle(Bytes({1}));
  EXPECT_EQ(hub.pooled_buffers(), LoopbackHub::kMaxPooledBuffers);
}

}  // namespace
}  // namespace moe::transport
