#include "common/transport/tagged_inbox.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace moe::transport {
namespace {

MessageTag Tag(MessageKind kind, uint64_t step, int32_t sender, uint32_t layer = 0) {
  return MessageTag{kind, step, layer, 0, sender};
}

Message Msg(const MessageTag& tag, int value) {
  return Message{tag, {static_cast<std::byte>(value)}};
}

int Value(const Message& message) {
  return message.payload.size() == 1 ? static_cast<int>(message.payload[0]) : -1;
}

absl::Time In(absl::Duration d) {
  return absl::Now() + d;
}

TEST(TaggedInboxTest, ReceiveAnyHandsOutMessagesOfAllSendersInArrivalOrder) {
  TaggedInbox inbox;
  ASSERT_TRUE(inbox.Deliver(Msg(Tag(MessageKind::kDispatch, 1, 3), 1)));
  ASSERT_TRUE(inbox.Deliver(Msg(Tag(MessageKind::kDispatch, 1, 1), 2)));
  ASSERT_TRUE(inbox.Deliver(Msg(Tag(MessageKind::kDispatch, 2, 3), 3)));
  ASSERT_TRUE(inbox.Deliver(Msg(Tag(MessageKind::kDispatch, 2, 1), 4)));
  EXPECT_EQ(inbox.queued_messages(), 4u);
  for (int expected = 1; expected <= 4; ++expected) {
    auto got = inbox.ReceiveAny(In(absl::Seconds(1)));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(Value(*got), expected);
  }
  EXPECT_EQ(inbox.queued_messages(), 0u);
}

TEST(TaggedInboxTest, ReceiveTaggedTakesTheExactMatchAndLeavesTheOthersQueued) {
  TaggedInbox inbox;
  inbox.Deliver(Msg(Tag(MessageKind::kCombine, 5, 2, /*layer=*/1), 51));
  inbox.Deliver(Msg(Tag(MessageKind::kDispatch, 5, 2, 0), 50));  // other kind, same step and layer
  inbox.Deliver(Msg(Tag(MessageKind::kCombine, 5, 7, 0), 70));   // other sender
  inbox.Deliver(Msg(Tag(MessageKind::kCombine, 5, 2, 0), 52));

  auto got = inbox.ReceiveTagged(Tag(MessageKind::kCombine, 5, 2, 0), In(absl::Seconds(1)));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->tag, Tag(MessageKind::kCombine, 5, 2, 0));
  EXPECT_EQ(Value(*got), 52);
  EXPECT_EQ(inbox.queued_messages(), 3u);
  EXPECT_EQ(inbox.dropped_messages(), 0u);

  // The rest, in their arrival order.
  for (int expected : {51, 50, 70}) {
    auto next = inbox.ReceiveAny(In(absl::Seconds(1)));
    ASSERT_TRUE(next.ok()) << next.status();
    EXPECT_EQ(Value(*next), expected);
  }
}

TEST(TaggedInboxTest, ReceiveTaggedDropsAndCountsOlderStepsOfThatSenderAndKindOnly) {
  TaggedInbox inbox;
  inbox.Deliver(Msg(Tag(MessageKind::kCombine, 3, 5), 30));     // stale: dropped
  inbox.Deliver(Msg(Tag(MessageKind::kCombine, 2, 5, 1), 21));  // stale: dropped
  inbox.Deliver(Msg(Tag(MessageKind::kCombine, 3, 6), 60));     // other sender: kept
  inbox.Deliver(Msg(Tag(MessageKind::kDispatch, 3, 5), 31));    // other kind: kept
  inbox.Deliver(Msg(Tag(MessageKind::kCombine, 9, 5), 90));     // newer step: kept
  inbox.Deliver(Msg(Tag(MessageKind::kCombine, 4, 5), 40));

  auto got = inbox.ReceiveTagged(Tag(MessageKind::kCombine, 4, 5), In(absl::Seconds(1)));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(Value(*got), 40);
  EXPECT_EQ(inbox.dropped_messages(), 2u);
  EXPECT_EQ(inbox.queued_messages(), 3u);

  auto stale = inbox.ReceiveTagged(Tag(MessageKind::kCombine, 3, 5), In(absl::Milliseconds(20)));
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(inbox.dropped_messages(), 2u);
  for (int expected : {60, 31, 90}) {
    auto next = inbox.ReceiveAny(In(absl::Seconds(1)));
    ASSERT_TRUE(next.ok()) << next.status();
    EXPECT_EQ(Value(*next), expected);
  }
}

TEST(TaggedInboxTest, MissedDeadlinesAreUnavailableNamingTheSender) {
  TaggedInbox inbox;
  inbox.Deliver(Msg(Tag(MessageKind::kCombine, 1, 8), 1));  // not what is waited for
  const absl::Time start = absl::Now();
  auto tagged = inbox.ReceiveTagged(Tag(MessageKind::kCombine, 1, 9), start + absl::Milliseconds(50));
  EXPECT_EQ(tagged.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(tagged.status().message(), "peer 9")) << tagged.status();
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(50));
  EXPECT_EQ(inbox.queued_messages(), 1u);

  TaggedInbox empty;
  auto any = empty.ReceiveAny(In(absl::Milliseconds(20)));
  EXPECT_EQ(any.status().code(), absl::StatusCode::kUnavailable);
}

TEST(TaggedInboxTest, ReceiveTaggedWaitsForAMessageDeliveredLater) {
  TaggedInbox inbox;
  // Usually the receiver is waiting by the time the thread delivers; either order must work.
  std::thread sender([&] {
    inbox.Deliver(Msg(Tag(MessageKind::kCombine, 7, 2), 8));  // another sender's first
    inbox.Deliver(Msg(Tag(MessageKind::kCombine, 7, 1), 7));
  });
  auto got = inbox.ReceiveTagged(Tag(MessageKind::kCombine, 7, 1), In(absl::Seconds(30)));
  sender.join();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(Value(*got), 7);
}

TEST(TaggedInboxTest, ShutdownWakesEveryWaiterWithCancelledAndRefusesDeliveries) {
  TaggedInbox inbox;
  inbox.Deliver(Msg(Tag(MessageKind::kCombine, 1, 4), 1));  // queued, not what is waited for
  absl::Status any_status, tagged_status;
  std::thread any([&] {
    // Takes the queued message, then waits.
    any_status = inbox.ReceiveAny(In(absl::Seconds(30))).status();
    if (any_status.ok()) any_status = inbox.ReceiveAny(In(absl::Seconds(30))).status();
  });
  std::thread tagged([&] {
    tagged_status = inbox.ReceiveTagged(Tag(MessageKind::kCombine, 1, 3), In(absl::Seconds(30))).status();
  });
  // Usually both are blocked by now; a waiter that comes late must fail fast all the same.
  const absl::Time start = absl::Now();
  EXPECT_TRUE(inbox.Shutdown());
  any.join();
  tagged.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_EQ(any_status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(tagged_status.code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(inbox.Shutdown());
  EXPECT_TRUE(inbox.is_shut_down());
  EXPECT_FALSE(inbox.Deliver(Msg(Tag(MessageKind::kCombine, 1, 3), 1)));
  EXPECT_EQ(inbox.queued_messages(), 0u);
  EXPECT_EQ(inbox.ReceiveTagged(Tag(MessageKind::kCombine, 1, 3), In(absl::Seconds(1))).status().code(),
            absl::StatusCode::kCancelled);
}

TEST(TaggedInboxTest, ShutdownDiscardsQueuedMessages) {
  TaggedInbox inbox;
  inbox.Deliver(Msg(Tag(MessageKind::kDispatch, 1, 0), 1));
  inbox.Shutdown();
  EXPECT_EQ(inbox.queued_messages(), 0u);
  EXPECT_EQ(inbox.ReceiveAny(In(absl::Seconds(1))).status().code(), absl::StatusCode::kCancelled);
}

TEST(TaggedInboxTest, FailedPeerEndsItsWaitersButQueuedMessagesStayReceivable) {
  TaggedInbox inbox;
  inbox.Deliver(Msg(Tag(MessageKind::kCombine, 1, 2), 1));
  absl::Status waiter_status;
  absl::Time woke;
  std::thread waiter([&] {
    waiter_status = inbox.ReceiveTagged(Tag(MessageKind::kCombine, 1, 3), In(absl::Seconds(30))).status();
    woke = absl::Now();
  });
  const absl::Time start = absl::Now();
  inbox.MarkPeerFailed(3, absl::UnavailableError("peer 3 shut down"));
  inbox.MarkPeerFailed(3, absl::UnavailableError("second reason"));  // the first one is kept
  waiter.join();
  EXPECT_LT(woke - start, absl::Seconds(10));
  EXPECT_EQ(waiter_status.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(waiter_status.message(), "peer 3 shut down")) << waiter_status;
  EXPECT_EQ(inbox.PeerFailure(3).message(), "peer 3 shut down");
  EXPECT_TRUE(inbox.PeerFailure(2).ok());

  // A message that arrived before the failure is still handed out; the failure does not touch
  // other senders nor ReceiveAny.
  inbox.Deliver(Msg(Tag(MessageKind::kCombine, 2, 3), 32));
  auto queued = inbox.ReceiveTagged(Tag(MessageKind::kCombine, 2, 3), In(absl::Seconds(1)));
  ASSERT_TRUE(queued.ok()) << queued.status();
  EXPECT_EQ(Value(*queued), 32);
  auto other = inbox.ReceiveTagged(Tag(MessageKind::kCombine, 1, 2), In(absl::Seconds(1)));
  ASSERT_TRUE(other.ok()) << other.status();

  inbox.ClearPeerFailure(3);
  EXPECT_TRUE(inbox.PeerFailure(3).ok());
  auto after_clear = inbox.ReceiveTagged(Tag(MessageKind::kCombine, 3, 3), In(absl::Milliseconds(20)));
  EXPECT_EQ(after_clear.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(after_clear.status().message(), "in time")) << after_clear.status();
}

constexpr int kSenders = 4;
constexpr int kSteps = 500;

// Starts one thread per sender delivering steps 0..kSteps-1 in order; payload: step % 251.
void StartProducers(TaggedInbox& inbox, std::vector<std::thread>& threads) {
  for (int s = 0; s < kSenders; ++s) {
    threads.emplace_back([&inbox, s] {
      for (int step = 0; step < kSteps; ++step) {
        inbox.Deliver(Message{Tag(MessageKind::kCombine, step, s), {static_cast<std::byte>(step % 251)}});
      }
    });
  }
}

TEST(TaggedInboxTest, ConcurrentProducersAndTaggedConsumersLoseNothing) {
  TaggedInbox inbox;
  std::vector<std::thread> threads;
  std::vector<int> received(kSenders, 0);
  for (int s = 0; s < kSenders; ++s) {
    threads.emplace_back([&, s] {
      for (int step = 0; step < kSteps; ++step) {
        auto got = inbox.ReceiveTagged(Tag(MessageKind::kCombine, step, s), In(absl::Seconds(60)));
        if (got.ok() && Value(*got) == step % 251) ++received[s];
      }
    });
  }
  StartProducers(inbox, threads);
  for (auto& t : threads) t.join();
  EXPECT_EQ(received, std::vector<int>(kSenders, kSteps));
  EXPECT_EQ(inbox.queued_messages(), 0u);
  EXPECT_EQ(inbox.dropped_messages(), 0u);
}

TEST(TaggedInboxTest, ConcurrentProducersAndAnyConsumersTakeEachMessageOnceInSenderOrder) {
  TaggedInbox inbox;
  std::vector<std::thread> threads;
  StartProducers(inbox, threads);
  constexpr int kConsumers = 2;
  // taken[c][sender]: the steps consumer c took from sender, in the order it took them.
  std::vector<std::vector<std::vector<int>>> taken(kConsumers, std::vector<std::vector<int>>(kSenders));
  std::atomic<int> total{0};
  for (int c = 0; c < kConsumers; ++c) {
    threads.emplace_back([&, c] {
      while (total.load() < kSenders * kSteps) {
        auto got = inbox.ReceiveAny(In(absl::Milliseconds(100)));
        if (!got.ok()) continue;
        taken[c][got->tag.sender].push_back(static_cast<int>(got->tag.step));
        ++total;
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int s = 0; s < kSenders; ++s) {
    std::vector<int> all;
    for (int c = 0; c < kConsumers; ++c) {
      EXPECT_TRUE(std::is_sorted(taken[c][s].begin(), taken[c][s].end()))
          << "consumer " << c << " sender " << s;
      all.insert(all.end(), taken[c][s].begin(), taken[c][s].end());
    }
    std::sort(all.begin(), all.end());
    std::vector<int> expected(kSteps);
    for (int i = 0; i < kSteps; ++i) expected[i] = i;
    EXPECT_EQ(all, expected) << "sender " << s;
  }
  EXPECT_EQ(inbox.queued_messages(), 0u);
}

}  // namespace
}  // namespace moe::transport
