// MoeDispatcher's split of a round's wait into transport and expert_wait (TakeWaitSplit), over
// loopback with fake expert workers that hold each round for a known time and stamp what they
// like. The checks are consistency, never timing bounds: the split's parts add up within the
// measured times, and the expert part is exactly the stamp the dispatcher was given.
#include "common/engine/moe_dispatch.h"

#include <algorithm>
#include <optional>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/engine/expert_placement.h"
#include "common/transport/loopback/loopback_transport.h"
#include "common/transport/moe_message.h"
#include "gtest/gtest.h"

namespace moe::engine {
namespace {

constexpr int64_t kHidden = 8;
constexpr int64_t kExperts = 4;
constexpr int32_t kAttentionPeer = 0;

// Serves one round on `endpoint`: answers the dispatch with zero rows of the same layout after
// holding it for `hold`, stamped with `stamp` (nullopt: a version-1 answer, as an older expert
// worker sends).
void ServeOneRound(transport::ActivationTransport* endpoint, absl::Duration hold,
                   std::optional<absl::Duration> stamp) {
  absl::StatusOr<transport::Message> dispatch = endpoint->ReceiveAny(absl::Now() + absl::Seconds(30));
  ASSERT_TRUE(dispatch.ok()) << dispatch.status();
  absl::StatusOr<transport::MoeMessageView> view = transport::DecodeMoeMessage(dispatch->payload);
  ASSERT_TRUE(view.ok()) << view.status();
  std::vector<std::byte> answer;
  bf16* rows = transport::EncodeMoeMessageHeader(kHidden, view->groups, &answer);
  std::fill(rows, rows + view->total_rows * kHidden, FloatToBF16(0.0f));
  absl::SleepFor(hold);
  if (stamp.has_value()) {
    ASSERT_TRUE(transport::StampExpertTime(*stamp, &answer).ok());
  }
  transport::MessageTag tag = dispatch->tag;
  tag.kind = transport::MessageKind::kCombine;
  tag.sender = endpoint->self();
  ASSERT_TRUE(endpoint->Send(dispatch->tag.sender, tag, answer).ok());
}

struct RoundTimes {
  absl::Duration dispatch, combine;
  MoeDispatcher::WaitSplit split;
};

// One round from the attention worker to `workers` expert workers, the w-th holding its round for
// holds[w] and stamping stamps[w].
RoundTimes RunRound(const std::vector<absl::Duration>& holds,
                    const std::vector<std::optional<absl::Duration>>& stamps) {
  transport::LoopbackHub hub;
  std::vector<int32_t> peers;
  for (size_t w = 0; w < holds.size(); ++w) peers.push_back(kFirstExpertPeerId + static_cast<int32_t>(w));
  MoeDispatcher dispatcher(hub.Endpoint(kAttentionPeer), ExpertPlacement(kExperts, peers), kHidden,
                           absl::Seconds(30));
  std::vector<std::thread> experts;
  for (size_t w = 0; w < holds.size(); ++w) {
    experts.emplace_back(ServeOneRound, hub.Endpoint(peers[w]), holds[w], stamps[w]);
  }
  // Two tokens, each routed to every expert once (so every worker gets rows).
  std::vector<bf16> h(2 * kHidden, FloatToBF16(1.0f));
  const std::vector<int32_t> ids = {0, 1, 2, 3, 3, 2, 1, 0};
  const std::vector<float> weights(8, 0.25f);
  std::vector<bf16> out(2 * kHidden);
  absl::StatusOr<DispatchHandle> handle =
      dispatcher.Dispatch(1, 0, 0, h.data(), 2, ids.data(), weights.data(), 4);
  EXPECT_TRUE(handle.ok()) << handle.status();
  if (handle.ok()) {
    EXPECT_TRUE(dispatcher.Combine(*handle, out.data()).ok());
  }
  for (std::thread& t : experts) t.join();
  RoundTimes times;
  std::tie(times.dispatch, times.combine) = dispatcher.TakeTimes();
  times.split = dispatcher.TakeWaitSplit();
  // Taking resets.
  const MoeDispatcher::WaitSplit again = dispatcher.TakeWaitSplit();
  EXPECT_EQ(again.transport, absl::ZeroDuration());
  EXPECT_EQ(again.expert_wait, absl::ZeroDuration());
  return times;
}

// What must hold for every round: the parts are non-negative and within the combine time.
void ExpectConsistent(const RoundTimes& t) {
  EXPECT_GE(t.split.transport, absl::ZeroDuration());
  EXPECT_GE(t.split.expert_wait, absl::ZeroDuration());
  EXPECT_LE(t.split.transport + t.split.expert_wait, t.combine);
}

TEST(MoeDispatchSplitTest, ExpertWaitIsTheStampAndTransportTheRestOfTheWait) {
  // The fake holds the round 40 ms and says so; the attention worker waited at least that long.
  const RoundTimes t = RunRound({absl::Milliseconds(40)}, {absl::Milliseconds(40)});
  ExpectConsistent(t);
  EXPECT_EQ(t.split.expert_wait, absl::Milliseconds(40));
}

TEST(MoeDispatchSplitTest, ParallelExpertWorkersCountTheLongestStamp) {
  // Both hold 30 ms, so the wait is at least 30 ms and both stamps fit in it.
  const RoundTimes t = RunRound({absl::Milliseconds(30), absl::Milliseconds(30)},
                                {absl::Milliseconds(5), absl::Milliseconds(20)});
  ExpectConsistent(t);
  EXPECT_EQ(t.split.expert_wait, absl::Milliseconds(20));
}

TEST(MoeDispatchSplitTest, AStampLongerThanTheWaitIsCappedAtTheWait) {
  // An expert worker claiming an hour cannot push the split past what was measured.
  const RoundTimes t = RunRound({absl::Milliseconds(5)}, {absl::Hours(1)});
  ExpectConsistent(t);
  EXPECT_EQ(t.split.transport, absl::ZeroDuration());
  EXPECT_GT(t.split.expert_wait, absl::ZeroDuration());
  EXPECT_LT(t.split.expert_wait, absl::Hours(1));
}

TEST(MoeDispatchSplitTest, AnUnstampedAnswerCountsAsTransport) {
  const RoundTimes t = RunRound({absl::Milliseconds(10)}, {std::nullopt});
  ExpectConsistent(t);
  EXPECT_EQ(t.split.expert_wait, absl::ZeroDuration());
  EXPECT_GE(t.split.transport, absl::Milliseconds(10));
}

// An expert worker that answers each of `rounds` dispatches with the dispatched rows themselves
// (stamped), through one reused answer buffer. It sends copies (Send) and recycles nothing, so the
// hub's pool holds only what the dispatcher gave back.
void EchoRounds(transport::ActivationTransport* endpoint, int rounds) {
  std::vector<std::byte> buffer;
  for (int r = 0; r < rounds; ++r) {
    absl::StatusOr<transport::Message> dispatch = endpoint->ReceiveAny(absl::Now() + absl::Seconds(30));
    ASSERT_TRUE(dispatch.ok()) << dispatch.status();
    absl::StatusOr<transport::MoeMessageView> view = transport::DecodeMoeMessage(dispatch->payload);
    ASSERT_TRUE(view.ok()) << view.status();
    bf16* rows = transport::EncodeMoeMessageHeader(kHidden, view->groups, &buffer);
    std::copy(view->rows, view->rows + view->total_rows * kHidden, rows);
    ASSERT_TRUE(transport::StampExpertTime(absl::Microseconds(1), &buffer).ok());
    transport::MessageTag tag = dispatch->tag;
    tag.kind = transport::MessageKind::kCombine;
    tag.sender = endpoint->self();
    ASSERT_TRUE(endpoint->Send(dispatch->tag.sender, tag, buffer).ok());
  }
}

TEST(MoeDispatchBufferTest, RoundsOfChangingSizesThroughReusedBuffersCombineExactly) {
  transport::LoopbackHub hub;
  const std::vector<int32_t> peers = {kFirstExpertPeerId, kFirstExpertPeerId + 1};
  MoeDispatcher dispatcher(hub.Endpoint(kAttentionPeer), ExpertPlacement(kExperts, peers), kHidden,
                           absl::Seconds(30));
  // Large, small, large again: a reused buffer holds a former round's bytes past the new size and
  // must never leak them into a later round.
  const std::vector<int64_t> tokens_per_round = {7, 1, 3, 7};
  const int rounds = static_cast<int>(tokens_per_round.size());
  std::vector<std::thread> experts;
  for (int32_t peer : peers) experts.emplace_back(EchoRounds, hub.Endpoint(peer), rounds);
  constexpr int64_t kTopK = 2;
  for (int round = 0; round < rounds; ++round) {
    const int64_t n = tokens_per_round[static_cast<size_t>(round)];
    std::vector<bf16> h(static_cast<size_t>(n * kHidden));
    for (size_t i = 0; i < h.size(); ++i) {
      h[i] = FloatToBF16(static_cast<float>((static_cast<int>(i) * 7 + round * 13) % 29) * 0.125f - 1.5f);
    }
    std::vector<int32_t> ids;
    std::vector<float> weights;
    for (int64_t t = 0; t < n; ++t) {
      ids.push_back(static_cast<int32_t>((t + round) % kExperts));
      ids.push_back(static_cast<int32_t>((t + round + 1) % kExperts));
      weights.push_back(0.625f);
      weights.push_back(0.375f);
    }
    std::vector<bf16> out(h.size(), FloatToBF16(99.0f));
    absl::StatusOr<DispatchHandle> handle = dispatcher.Dispatch(1, static_cast<uint32_t>(round), 0, h.data(),
                                                                n, ids.data(), weights.data(), kTopK);
    ASSERT_TRUE(handle.ok()) << handle.status();
    ASSERT_TRUE(dispatcher.Combine(*handle, out.data()).ok());
    // The combine of echoed rows: sum over ranks of weight x row, in fp32, rounded once.
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t i = 0; i < kHidden; ++i) {
        float acc = 0.0f;
        for (int64_t r = 0; r < kTopK; ++r) {
          acc += weights[static_cast<size_t>(t * kTopK + r)] *
                 BF16ToFloat(h[static_cast<size_t>(t * kHidden + i)]);
        }
        ASSERT_EQ(out[static_cast<size_t>(t * kHidden + i)].bits, FloatToBF16(acc).bits)
            << "round " << round << " token " << t << " element " << i;
      }
    }
  }
  for (std::thread& t : experts) t.join();
  // Each round the dispatcher's sends took the buffers its previous Combine gave back (one per
  // worker's answer), and the last Combine gave back one per worker again.
  EXPECT_EQ(hub.pooled_buffers(), peers.size());
}

}  // namespace
}  // namespace moe::engine
