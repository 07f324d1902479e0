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

  // The rest, in their arrival order, except that sender 2, which had two queued, yields its turn
  // after 51 to sender 7's message that was waiting meanwhile (ReceiveAny is fair per sender).
  for (int expected : {51, 70, 50}) {
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
  // Producers run ahead of the consumers by any number of steps: unbounded.
  TaggedInbox inbox(InboxLimits::Unbounded());
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
  TaggedInbox inbox(InboxLimits::Unbounded());
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

uint64_t Drops(const TaggedInbox& inbox, DropReason reason) {
  return inbox.drop_counts()[static_cast<int>(reason)];
}

TEST(TaggedInboxBoundsTest, QueueIsBoundedPerSenderAndOtherSendersAreUnaffected) {
  TaggedInbox inbox(InboxLimits{.max_queued_per_sender = 4, .max_steps_ahead = 64});
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(inbox.Deliver(Msg(Tag(MessageKind::kDispatch, 1, 3, i), i)), i < 4) << i;
  }
  EXPECT_EQ(inbox.queued_messages(3), 4u);
  EXPECT_EQ(Drops(inbox, DropReason::kQueueFull), 96u);
  EXPECT_EQ(inbox.dropped_messages(), 96u);
  // Another sender still gets its messages queued.
  EXPECT_TRUE(inbox.Deliver(Msg(Tag(MessageKind::kDispatch, 1, 5), 55)));
  EXPECT_EQ(inbox.queued_messages(5), 1u);
  // Screen counts messages on the way (rendezvous receives) against the bound, without counting.
  EXPECT_EQ(inbox.Screen(Tag(MessageKind::kDispatch, 1, 5), /*pending=*/3), DropReason::kQueueFull);
  EXPECT_EQ(inbox.Screen(Tag(MessageKind::kDispatch, 1, 5), /*pending=*/2), std::nullopt);
  EXPECT_EQ(inbox.dropped_messages(), 96u);
  // Taking one makes room for one.
  ASSERT_TRUE(inbox.ReceiveTagged(Tag(MessageKind::kDispatch, 1, 3, 0), In(absl::Seconds(1))).ok());
  EXPECT_TRUE(inbox.Deliver(Msg(Tag(MessageKind::kDispatch, 1, 3, 99), 99)));
  EXPECT_FALSE(inbox.Deliver(Msg(Tag(MessageKind::kDispatch, 1, 3, 100), 100)));
}

TEST(TaggedInboxBoundsTest, StepWindowDropsFarAheadAndBehindOnceTheReceiverWaited) {
  TaggedInbox inbox(InboxLimits{.max_queued_per_sender = 0, .max_steps_ahead = 8});
  // Before the receiver waited for anything from sender 2, any step is accepted.
  EXPECT_TRUE(inbox.Deliver(Msg(Tag(MessageKind::kCombine, 1000, 2), 1)));
  // Waiting for step 10 sets the window to [10, 18].
  auto missing = inbox.ReceiveTagged(Tag(MessageKind::kCombine, 10, 2), In(absl::Milliseconds(5)));
  EXPECT_TRUE(absl::IsUnavailable(missing.status()));
  EXPECT_FALSE(inbox.Deliver(Msg(Tag(MessageKind::kCombine, 9, 2), 2)));   // behind
  EXPECT_FALSE(inbox.Deliver(Msg(Tag(MessageKind::kCombine, 19, 2), 3)));  // too far ahead
  EXPECT_FALSE(inbox.Deliver(Msg(Tag(MessageKind::kCombine, UINT64_MAX, 2), 4)));
  EXPECT_TRUE(inbox.Deliver(Msg(Tag(MessageKind::kCombine, 10, 2, 1), 5)));  // the round waited for
  EXPECT_TRUE(inbox.Deliver(Msg(Tag(MessageKind::kCombine, 18, 2), 6)));     // the window's top
  EXPECT_EQ(Drops(inbox, DropReason::kStepWindow), 3u);
  // The window is per sender: sender 4 has none yet.
  EXPECT_TRUE(inbox.Deliver(Msg(Tag(MessageKind::kCombine, 1, 4), 7)));
  // ReceiveAny moves the window too: taking step 1000's message from sender 2 sets it to 1000.
  auto any = inbox.ReceiveAny(In(absl::Seconds(1)));
  ASSERT_TRUE(any.ok()) << any.status();
  EXPECT_EQ(any->tag.step, 1000u);
  EXPECT_FALSE(inbox.Deliver(Msg(Tag(MessageKind::kCombine, 999, 2), 8)));
  EXPECT_TRUE(inbox.Deliver(Msg(Tag(MessageKind::kCombine, 1008, 2), 9)));
  // A fresh admission forgets the window and what was queued (a restarted peer starts over).
  inbox.ResetSender(2);
  EXPECT_EQ(inbox.queued_messages(2), 0u);
  EXPECT_TRUE(inbox.Deliver(Msg(Tag(MessageKind::kCombine, 0, 2), 10)));
  EXPECT_EQ(inbox.queued_messages(), 2u);  // sender 4's and sender 2's new one
}

TEST(TaggedInboxBoundsTest, FloodOfFarFutureStepsLeavesTheQueueBounded) {
  TaggedInbox inbox;  // the defaults
  ASSERT_TRUE(inbox.Deliver(Msg(Tag(MessageKind::kDispatch, 1, 0), 1)));
  ASSERT_TRUE(inbox.ReceiveAny(In(absl::Seconds(1))).ok());  // window at step 1
  for (uint64_t i = 0; i < 200'000; ++i) inbox.Deliver(Msg(Tag(MessageKind::kDispatch, 1'000'000 + i, 0), 0));
  for (uint64_t i = 0; i < 1000; ++i) inbox.Deliver(Msg(Tag(MessageKind::kDispatch, 2, 0, i), 0));
  EXPECT_EQ(inbox.queued_messages(), InboxLimits{}.max_queued_per_sender);
  EXPECT_EQ(Drops(inbox, DropReason::kStepWindow), 200'000u);
  EXPECT_EQ(Drops(inbox, DropReason::kQueueFull), 1000u - InboxLimits{}.max_queued_per_sender);
  // Another sender's round goes through at once.
  ASSERT_TRUE(inbox.Deliver(Msg(Tag(MessageKind::kDispatch, 5, 9), 9)));
  auto got = inbox.ReceiveTagged(Tag(MessageKind::kDispatch, 5, 9), In(absl::Seconds(1)));
  ASSERT_TRUE(got.ok()) << got.status();
}

TEST(TaggedInboxBoundsTest, ReceiveAnyServesABackloggedSenderInTurnWithTheOthers) {
  TaggedInbox inbox;
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(inbox.Deliver(Msg(Tag(MessageKind::kDispatch, 1, 1, i), 100 + i)));
  // Sender 1's backlog is being served when sender 2's message arrives: sender 2 is next but one.
  auto first = inbox.ReceiveAny(In(absl::Seconds(1)));
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(Value(*first), 100);
  ASSERT_TRUE(inbox.Deliver(Msg(Tag(MessageKind::kDispatch, 1, 2), 7)));
  std::vector<int> order;
  for (int i = 0; i < 3; ++i) {
    auto got = inbox.ReceiveAny(In(absl::Seconds(1)));
    ASSERT_TRUE(got.ok());
    order.push_back(Value(*got));
  }
  // Sender 2's message arrived after sender 1's turn at 100, so 101 (which arrived before it)
  // goes first, then sender 2, then sender 1 again.
  EXPECT_EQ(order, (std::vector<int>{101, 7, 102}));
  // With a new message from sender 2 while sender 1 still has a backlog: one of sender 1's first.
  ASSERT_TRUE(inbox.Deliver(Msg(Tag(MessageKind::kDispatch, 2, 2), 8)));
  order.clear();
  for (int i = 0; i < 3; ++i) {
    auto got = inbox.ReceiveAny(In(absl::Seconds(1)));
    ASSERT_TRUE(got.ok());
    order.push_back(Value(*got));
  }
  EXPECT_EQ(order, (std::vector<int>{103, 8, 104}));
}

TEST(TaggedInboxBoundsTest, TransportDropsAreCountedByReason) {
  TaggedInbox inbox;
  inbox.CountDrop(DropReason::kUnknownSender);
  inbox.CountDrop(DropReason::kBadSecret);
  inbox.CountDrop(DropReason::kBadSecret);
  inbox.CountDrop(DropReason::kTooLarge);
  EXPECT_EQ(Drops(inbox, DropReason::kUnknownSender), 1u);
  EXPECT_EQ(Drops(inbox, DropReason::kBadSecret), 2u);
  EXPECT_EQ(Drops(inbox, DropReason::kTooLarge), 1u);
  EXPECT_EQ(inbox.dropped_messages(), 4u);
  EXPECT_EQ(DropReasonName(DropReason::kStepWindow), "step_window");
  EXPECT_EQ(DropReasonName(DropReason::kQueueFull), "queue_full");
}

// A poller standing in for a transport's network code: on its `deliver_on`-th Poll it delivers a
// message into the inbox, as UCX progress on the waiting thread would.
class FakePoller final : public InboxPoller {
 public:
  FakePoller(TaggedInbox* inbox, int deliver_on, Message message)
      : inbox_(inbox), deliver_on_(deliver_on), message_(std::move(message)) {}
  void BeginSpin() override { ++begins; }
  bool Poll() override {
    if (++polls == deliver_on_) inbox_->Deliver(message_);
    return polls == deliver_on_;
  }
  void EndSpin() override { ++ends; }
  // Sleeps (at most 1 ms, like a network event arriving) and delivers on the `deliver_on`-th wait
  // when polls do not.
  void WaitForActivity(absl::Time until) override {
    absl::SleepFor(std::min(absl::Milliseconds(1), std::max(absl::ZeroDuration(), until - absl::Now())));
    if (++waits == deliver_on_wait) inbox_->Deliver(message_);
  }

  std::atomic<int> begins{0}, polls{0}, ends{0}, waits{0};
  int deliver_on_wait = -1;

 private:
  TaggedInbox* const inbox_;
  const int deliver_on_;
  const Message message_;
};

TEST(TaggedInboxTest, AWaiterSpinsOnThePollerAndTakesWhatItDelivers) {
  TaggedInbox inbox;
  const MessageTag tag = Tag(MessageKind::kCombine, 1, 7);
  FakePoller poller(&inbox, /*deliver_on=*/3, Msg(tag, 42));
  inbox.SetPoller(&poller, absl::Seconds(30));  // long: the delivery ends the spin, not the time
  auto got = inbox.ReceiveTagged(tag, In(absl::Seconds(30)));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(Value(*got), 42);
  EXPECT_EQ(poller.polls.load(), 3);  // stopped polling once the message was there
  EXPECT_EQ(poller.begins.load(), 1);
  EXPECT_EQ(poller.ends.load(), 1);

  // ReceiveAny spins the same way.
  FakePoller any_poller(&inbox, /*deliver_on=*/2, Msg(Tag(MessageKind::kDispatch, 2, 9), 5));
  inbox.SetPoller(&any_poller, absl::Seconds(30));
  auto any = inbox.ReceiveAny(In(absl::Seconds(30)));
  ASSERT_TRUE(any.ok()) << any.status();
  EXPECT_EQ(Value(*any), 5);
  EXPECT_EQ(any_poller.ends.load(), 1);
}

TEST(TaggedInboxTest, ASpinEndsAtTheDeadlineOrTheSpinAndThenTheWaiterSleeps) {
  TaggedInbox inbox;
  const MessageTag tag = Tag(MessageKind::kCombine, 1, 7);
  FakePoller never(&inbox, /*deliver_on=*/-1, Msg(tag, 1));
  // The spin (30 s) is capped by the deadline: the wait still ends UNAVAILABLE at the deadline.
  inbox.SetPoller(&never, absl::Seconds(30));
  auto late = inbox.ReceiveTagged(tag, In(absl::Milliseconds(20)));
  EXPECT_TRUE(absl::IsUnavailable(late.status())) << late.status();
  EXPECT_GT(never.polls.load(), 0);
  EXPECT_EQ(never.begins.load(), never.ends.load());

  // A short spin, then a sleep that a delivery from another thread ends.
  FakePoller short_spin(&inbox, /*deliver_on=*/-1, Msg(tag, 1));
  inbox.SetPoller(&short_spin, absl::Microseconds(1));
  std::thread sender([&inbox, tag] {
    absl::SleepFor(absl::Milliseconds(20));
    inbox.Deliver(Msg(tag, 8));
  });
  auto got = inbox.ReceiveTagged(tag, In(absl::Seconds(30)));
  sender.join();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(Value(*got), 8);
  EXPECT_EQ(short_spin.begins.load(), short_spin.ends.load());

  // Spinning off (zero): the poller is never called; Shutdown still wakes a waiter.
  FakePoller off(&inbox, /*deliver_on=*/1, Msg(tag, 1));
  inbox.SetPoller(&off, absl::ZeroDuration());
  std::thread stopper([&inbox] {
    absl::SleepFor(absl::Milliseconds(20));
    inbox.Shutdown();
  });
  auto cancelled = inbox.ReceiveTagged(Tag(MessageKind::kCombine, 2, 7), In(absl::Seconds(30)));
  stopper.join();
  EXPECT_TRUE(absl::IsCancelled(cancelled.status())) << cancelled.status();
  EXPECT_EQ(off.polls.load(), 0);
}

TEST(TaggedInboxTest, ADrivingWaiterSleepsInThePollerAndTakesWhatItsEventsBring) {
  TaggedInbox inbox;
  const MessageTag tag = Tag(MessageKind::kCombine, 1, 7);
  FakePoller poller(&inbox, /*deliver_on=*/-1, Msg(tag, 11));
  poller.deliver_on_wait = 3;
  inbox.SetPoller(&poller, absl::ZeroDuration(), /*drive=*/true);
  auto got = inbox.ReceiveTagged(tag, In(absl::Seconds(30)));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(Value(*got), 11);
  EXPECT_EQ(poller.waits.load(), 3);  // no more waits once the message was there
  EXPECT_EQ(poller.begins.load(), 1);
  EXPECT_EQ(poller.ends.load(), 1);

  // Nothing comes: the wait ends UNAVAILABLE at its deadline, in the poller's slices.
  FakePoller never(&inbox, /*deliver_on=*/-1, Msg(tag, 1));
  inbox.SetPoller(&never, absl::ZeroDuration(), /*drive=*/true);
  auto late = inbox.ReceiveAny(In(absl::Milliseconds(20)));
  EXPECT_TRUE(absl::IsUnavailable(late.status())) << late.status();
  EXPECT_GT(never.waits.load(), 0);
  EXPECT_EQ(never.begins.load(), never.ends.load());

  // A delivery from another thread (a message the poller does not bring) and Shutdown are seen
  // by a driving waiter too.
  std::thread sender([&inbox, tag] {
    absl::SleepFor(absl::Milliseconds(20));
    inbox.Deliver(Msg(tag, 12));
  });
  auto other = inbox.ReceiveTagged(tag, In(absl::Seconds(30)));
  sender.join();
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(Value(*other), 12);
  std::thread stopper([&inbox] {
    absl::SleepFor(absl::Milliseconds(20));
    inbox.Shutdown();
  });
  auto cancelled = inbox.ReceiveTagged(Tag(MessageKind::kCombine, 2, 7), In(absl::Seconds(30)));
  stopper.join();
  EXPECT_TRUE(absl::IsCancelled(cancelled.status())) << cancelled.status();
}

// A network whose every Poll brings one message (steps 1, 2, ...): an answer already on its way.
class EveryPollDelivers final : public InboxPoller {
 public:
  explicit EveryPollDelivers(TaggedInbox* inbox) : inbox_(inbox) {}
  void BeginSpin() override {}
  bool Poll() override {
    const int n = ++polls;
    inbox_->Deliver(Msg(Tag(MessageKind::kDispatch, static_cast<uint64_t>(n), 3), n));
    return true;
  }
  void EndSpin() override {}
  void WaitForActivity(absl::Time) override {}
  std::atomic<int> polls{0};

 private:
  TaggedInbox* const inbox_;
};

TEST(TaggedInboxTest, AnAdaptiveWaiterKeepsSpinningWhileItsSpinsCatchTheMessages) {
  TaggedInbox inbox;
  EveryPollDelivers poller(&inbox);
  // Spins of a second, and every wait counts as short: the spin ends with the message, never the
  // clock, however slow this machine is.
  AdaptiveSpinConfig config;
  config.max_spin = config.min_spin = absl::Seconds(1);
  config.spin_below = absl::Seconds(100);
  ASSERT_TRUE(config.Validate().ok());
  inbox.SetAdaptivePoller(&poller, config);
  constexpr int kWaits = 20;
  for (int i = 1; i <= kWaits; ++i) {
    auto got = inbox.ReceiveAny(In(absl::Seconds(30)));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(Value(*got), i);
  }
  EXPECT_EQ(poller.polls.load(), kWaits);  // one Poll per wait: each spin caught its message
  const SpinCounts counts = inbox.spin_counts();
  EXPECT_EQ(counts.waits, static_cast<uint64_t>(kWaits));
  EXPECT_EQ(counts.spins, static_cast<uint64_t>(kWaits));
  EXPECT_EQ(counts.caught, static_cast<uint64_t>(kWaits));
}

TEST(TaggedInboxTest, AnAdaptiveWaiterStopsSpinningAfterALongWait) {
  TaggedInbox inbox;
  const MessageTag tag = Tag(MessageKind::kCombine, 1, 7);
  FakePoller never(&inbox, /*deliver_on=*/-1, Msg(tag, 1));
  // The first wait spins max_spin (no history yet); a wait of 20 ms is far above spin_below.
  AdaptiveSpinConfig config;
  config.max_spin = config.min_spin = absl::Milliseconds(1);
  config.spin_below = absl::Milliseconds(1);
  inbox.SetAdaptivePoller(&never, config);
  EXPECT_TRUE(absl::IsUnavailable(inbox.ReceiveTagged(tag, In(absl::Milliseconds(20))).status()));
  const int polls_after_first = never.polls.load();
  EXPECT_GT(polls_after_first, 0);
  EXPECT_EQ(never.begins.load(), 1);

  // The next wait does not touch the poller: it sleeps on the inbox until its deadline.
  EXPECT_TRUE(absl::IsUnavailable(inbox.ReceiveTagged(tag, In(absl::Milliseconds(20))).status()));
  EXPECT_EQ(never.polls.load(), polls_after_first);
  EXPECT_EQ(never.begins.load(), 1);
  const SpinCounts counts = inbox.spin_counts();
  EXPECT_EQ(counts.waits, 2u);
  EXPECT_EQ(counts.spins, 1u);
  EXPECT_EQ(counts.caught, 0u);

  // A fixed spin (SetPoller) spins on every wait whatever the history.
  inbox.SetPoller(&never, absl::Milliseconds(1));
  EXPECT_TRUE(absl::IsUnavailable(inbox.ReceiveTagged(tag, In(absl::Milliseconds(20))).status()));
  EXPECT_EQ(never.begins.load(), 2);
  EXPECT_EQ(inbox.spin_counts().spins, 2u);
}

}  // namespace
}  // namespace moe::transport
