// Admission and bounds of the UCX data plane (docs/data-plane.md#admission-and-bounds): messages
// from senders that were not admitted, with the wrong secret, larger than the admitted bound,
// beyond the per-sender queue or outside the step window are dropped and counted, and the admitted
// peers' rounds still complete.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "common/transport/ucx/ucx_transport.h"
#include "gtest/gtest.h"
#include "tests/common/transport/ucx/ucx_test_peers.h"

namespace moe::transport {
namespace {

using ::moe::transport::testing::AdmitAndConnect;
using ::moe::transport::testing::Pattern;

MessageTag Tag(MessageKind kind, uint64_t step, int32_t sender, uint32_t layer = 0) {
  return MessageTag{kind, step, layer, 0, sender};
}

absl::Time In(absl::Duration d) {
  return absl::Now() + d;
}

uint64_t Drops(const ActivationTransport& t, DropReason reason) {
  return t.drop_counts()[static_cast<int>(reason)];
}

// Waits (bounded) until `t` has counted at least `n` drops of `reason`: drops happen on the
// receiver's progress thread, after the sender's Send returned.
bool AwaitDrops(const ActivationTransport& t, DropReason reason, uint64_t n) {
  const absl::Time deadline = In(absl::Seconds(20));
  while (Drops(t, reason) < n && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(2));
  return Drops(t, reason) >= n;
}

std::unique_ptr<UcxTransport> MakeTransport(int32_t self, const UcxOptions& options = {}) {
  auto transport = UcxTransport::Create(self, options);
  EXPECT_TRUE(transport.ok()) << transport.status();
  return transport.ok() ? *std::move(transport) : nullptr;
}

// One round as the workers run it: `attention` dispatches step/layer to `expert`, which answers.
void ExpectRound(UcxTransport& attention, UcxTransport& expert, uint64_t step, uint32_t layer = 0) {
  const MessageTag dispatch = Tag(MessageKind::kDispatch, step, attention.self(), layer);
  ASSERT_TRUE(attention.Send(expert.self(), dispatch, Pattern(256, step)).ok());
  auto got = expert.ReceiveTagged(dispatch, In(absl::Seconds(10)));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->payload, Pattern(256, step));
  const MessageTag combine = Tag(MessageKind::kCombine, step, expert.self(), layer);
  ASSERT_TRUE(expert.Send(attention.self(), combine, got->payload).ok());
  auto answer = attention.ReceiveTagged(combine, In(absl::Seconds(10)));
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->payload, Pattern(256, step));
}

TEST(UcxAdmissionTest, UnadmittedSenderAndWrongSecretAreDroppedAndCounted) {
  auto expert = MakeTransport(1000);
  auto attention = MakeTransport(0);
  // An impostor that claims the admitted attention worker's id, and a stranger with its own id.
  auto impostor = MakeTransport(0);
  auto stranger = MakeTransport(7);
  ASSERT_TRUE(expert && attention && impostor && stranger);
  ASSERT_TRUE(AdmitAndConnect(*attention, *expert).ok());
  ASSERT_TRUE(AdmitAndConnect(*expert, *attention).ok());
  // Both got the expert's address (as anyone could have); neither got a secret from it.
  ASSERT_TRUE(impostor->Connect(1000, expert->WorkerAddress(), std::string(16, '\0')).ok());
  ASSERT_TRUE(stranger->Connect(1000, expert->WorkerAddress(), std::string(16, 'x')).ok());

  constexpr int kEach = 50;
  for (int i = 0; i < kEach; ++i) {
    ASSERT_TRUE(impostor->Send(1000, Tag(MessageKind::kDispatch, 1, 0), Pattern(64, i)).ok());
    ASSERT_TRUE(stranger->Send(1000, Tag(MessageKind::kDispatch, 1, 7), Pattern(64, i)).ok());
  }
  // A spoofed large message (rendezvous) is refused before its payload is pulled.
  ASSERT_TRUE(impostor->Send(1000, Tag(MessageKind::kDispatch, 1, 0), Pattern(1 << 20, 1)).ok());
  EXPECT_TRUE(AwaitDrops(*expert, DropReason::kBadSecret, kEach + 1));
  EXPECT_TRUE(AwaitDrops(*expert, DropReason::kUnknownSender, kEach));
  EXPECT_EQ(expert->queued_messages(0), 0u);
  EXPECT_EQ(expert->queued_messages(7), 0u);

  // The admitted peer's round completes, with its own payload (not the impostor's step-1 message).
  ExpectRound(*attention, *expert, 1);
  EXPECT_EQ(Drops(*expert, DropReason::kBadSecret), kEach + 1u);
  EXPECT_EQ(Drops(*expert, DropReason::kUnknownSender), static_cast<uint64_t>(kEach));
}

TEST(UcxAdmissionTest, ANewAdmissionRevokesTheOldSecret) {
  auto expert = MakeTransport(1000);
  auto attention = MakeTransport(0);
  ASSERT_TRUE(expert && attention);
  ASSERT_TRUE(AdmitAndConnect(*attention, *expert).ok());
  ASSERT_TRUE(AdmitAndConnect(*expert, *attention).ok());
  ExpectRound(*attention, *expert, 1);
  // The expert worker admits the attention worker afresh (a new rendezvous): until the attention
  // worker connects with the new secret, its messages carry the old one and are dropped.
  ASSERT_TRUE(expert->Admit(0, testing::kTestMaxMessageBytes).ok());
  ASSERT_TRUE(attention->Send(1000, Tag(MessageKind::kDispatch, 2, 0), Pattern(64, 2)).ok());
  EXPECT_TRUE(AwaitDrops(*expert, DropReason::kBadSecret, 1));
  ASSERT_TRUE(AdmitAndConnect(*attention, *expert).ok());
  ExpectRound(*attention, *expert, 2);
  expert->Revoke(0);
  ASSERT_TRUE(attention->Send(1000, Tag(MessageKind::kDispatch, 3, 0), Pattern(64, 3)).ok());
  EXPECT_TRUE(AwaitDrops(*expert, DropReason::kUnknownSender, 1));
}

TEST(UcxAdmissionTest, OversizedMessagesAreDroppedBeforeBeingReceived) {
  auto expert = MakeTransport(1000);
  auto attention = MakeTransport(0);
  ASSERT_TRUE(expert && attention);
  constexpr size_t kBound = 64 * 1024;  // the most one round of this peer can carry
  ASSERT_TRUE(AdmitAndConnect(*attention, *expert, kBound).ok());
  ASSERT_TRUE(AdmitAndConnect(*expert, *attention).ok());
  // One byte over (eager), and 256 MiB of address space claimed by a 16 MiB rendezvous message
  // (the sender completes: the receiver declines the transfer).
  ASSERT_TRUE(attention->Send(1000, Tag(MessageKind::kDispatch, 1, 0), Pattern(kBound + 1, 1)).ok());
  ASSERT_TRUE(attention->Send(1000, Tag(MessageKind::kDispatch, 1, 0), Pattern(16 << 20, 2)).ok());
  EXPECT_TRUE(AwaitDrops(*expert, DropReason::kTooLarge, 2));
  EXPECT_EQ(expert->queued_messages(0), 0u);
  // Exactly the bound is fine.
  const MessageTag dispatch = Tag(MessageKind::kDispatch, 1, 0);
  ASSERT_TRUE(attention->Send(1000, dispatch, Pattern(kBound, 3)).ok());
  auto got = expert->ReceiveTagged(dispatch, In(absl::Seconds(10)));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->payload, Pattern(kBound, 3));
  EXPECT_EQ(Drops(*expert, DropReason::kTooLarge), 2u);
}

// The outside tester's attack, by an admitted peer that misbehaves: small messages with far-future
// steps (20k here, to keep the test short on two cores; TaggedInboxBoundsTest takes 200k without
// the network), then a flood inside the step window. The expert worker's memory stays bounded
// (its queue for that sender never exceeds the limit), every message is accounted for, and another
// attention worker's round right after succeeds.
TEST(UcxAdmissionTest, FloodFromAnAdmittedPeerStaysBoundedAndDoesNotStopOthers) {
  UcxOptions options;
  options.inbox.max_queued_per_sender = 8;
  options.inbox.max_steps_ahead = 16;
  auto expert = MakeTransport(1000, options);
  auto victim = MakeTransport(0, options);
  auto flooder = MakeTransport(1, options);
  ASSERT_TRUE(expert && victim && flooder);
  for (UcxTransport* a : {victim.get(), flooder.get()}) {
    ASSERT_TRUE(AdmitAndConnect(*a, *expert).ok());
    ASSERT_TRUE(AdmitAndConnect(*expert, *a).ok());
  }
  // The flooder's first round sets its step window at step 1.
  ExpectRound(*flooder, *expert, 1);
  ExpectRound(*victim, *expert, 1);

  constexpr uint64_t kFarFuture = 20'000;
  const std::vector<std::byte> small = Pattern(32, 7);
  for (uint64_t i = 0; i < kFarFuture; ++i) {
    ASSERT_TRUE(flooder->Send(1000, Tag(MessageKind::kDispatch, 1'000'000 + i, 1), small).ok());
  }
  // Within the window (steps 2..17) but never answered: only max_queued_per_sender stay.
  constexpr uint64_t kInWindow = 1000;
  for (uint64_t i = 0; i < kInWindow; ++i) {
    ASSERT_TRUE(flooder->Send(1000, Tag(MessageKind::kDispatch, 2 + i % 16, 1, i), small).ok());
  }
  EXPECT_TRUE(AwaitDrops(*expert, DropReason::kQueueFull, kInWindow - 8));
  EXPECT_EQ(Drops(*expert, DropReason::kStepWindow), kFarFuture);
  EXPECT_EQ(Drops(*expert, DropReason::kQueueFull), kInWindow - 8);
  EXPECT_EQ(expert->queued_messages(1), 8u);

  // The victim's next rounds are not held up by the flooder's queue: the expert worker takes
  // rounds with ReceiveAny, which serves the senders in turn, so at most one of the flooder's
  // queued messages comes before each of the victim's.
  const absl::Time start = absl::Now();
  for (uint64_t step = 2; step <= 4; ++step) {
    const MessageTag dispatch = Tag(MessageKind::kDispatch, step, 0);
    ASSERT_TRUE(victim->Send(1000, dispatch, Pattern(256, step)).ok());
    // Send returns once the buffer is free, maybe before the message arrived: wait for it.
    const absl::Time arrived_by = In(absl::Seconds(10));
    while (expert->queued_messages(0) == 0 && absl::Now() < arrived_by) absl::SleepFor(absl::Milliseconds(1));
    int flooder_first = 0;
    for (;;) {
      auto got = expert->ReceiveAny(In(absl::Seconds(10)));
      ASSERT_TRUE(got.ok()) << got.status();
      if (got->tag.sender == 1) {
        ++flooder_first;
        continue;
      }
      EXPECT_EQ(got->tag, dispatch);
      break;
    }
    EXPECT_LE(flooder_first, 1) << "step " << step;
    const MessageTag combine = Tag(MessageKind::kCombine, step, 1000);
    ASSERT_TRUE(expert->Send(0, combine, Pattern(256, step)).ok());
    auto answer = victim->ReceiveTagged(combine, In(absl::Seconds(10)));
    ASSERT_TRUE(answer.ok()) << answer.status();
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  // Behind the window: a late message of step 0 from the victim.
  ASSERT_TRUE(victim->Send(1000, Tag(MessageKind::kDispatch, 0, 0), small).ok());
  EXPECT_TRUE(AwaitDrops(*expert, DropReason::kStepWindow, kFarFuture + 1));
}

}  // namespace
}  // namespace moe::transport
