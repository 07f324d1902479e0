#include "common/engine/expert_shard_server.h"

#include <algorithm>
#include <cstddef>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/engine/expert_block.h"
#include "common/model/checkpoint.h"
#include "common/model/config.h"
#include "common/model/safetensors.h"
#include "common/model/weights.h"
#include "common/transport/loopback/loopback_transport.h"
#include "common/transport/moe_message.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/model/test_util.h"

namespace moe::engine {
namespace {

using ::testing::ElementsAre;
using transport::ExpertGroup;
using transport::Message;
using transport::MessageKind;
using transport::MessageTag;

constexpr int32_t kAttentionPeer = 0;
constexpr int32_t kExpertPeer = 1000;
// Only bounds a failing test: every answer the tests wait for is sent before or right after the
// wait begins.
constexpr absl::Duration kFailAfter = absl::Seconds(60);

// Everything an observer was told, in order.
class RecordingObserver : public ExpertRoundObserver {
 public:
  struct Served {
    int64_t layer;
    std::vector<uint64_t> rows_per_expert;
    uint64_t bytes_received;
    uint64_t bytes_sent;
  };

  void OnRoundServed(const ServedRound& round) override {
    absl::MutexLock lock(&mu_);
    served_.push_back({round.layer,
                       std::vector<uint64_t>(round.rows_per_expert.begin(), round.rows_per_expert.end()),
                       round.bytes_received, round.bytes_sent});
  }
  void OnRoundFailed(const FailedRound& round) override {
    absl::MutexLock lock(&mu_);
    failed_.push_back(round);
  }
  void OnIdle(absl::Time) override {}

  std::vector<Served> served() {
    absl::MutexLock lock(&mu_);
    return served_;
  }
  std::vector<FailedRound> failed() {
    absl::MutexLock lock(&mu_);
    return failed_;
  }

 private:
  absl::Mutex mu_;
  std::vector<Served> served_ ABSL_GUARDED_BY(mu_);
  std::vector<FailedRound> failed_ ABSL_GUARDED_BY(mu_);
};

// Holds the first served round inside the observer (so the server is mid-round) until released.
class BlockingObserver : public ExpertRoundObserver {
 public:
  void OnRoundServed(const ServedRound&) override {
    if (entered_.HasBeenNotified()) return;
    entered_.Notify();
    release_.WaitForNotification();
  }
  void OnRoundFailed(const FailedRound&) override {}
  void OnIdle(absl::Time) override {}

  absl::Notification entered_;
  absl::Notification release_;
};

// The small test model (hidden 8, 2 MoE layers, 4 experts); the server hosts experts [1, 3).
class ExpertShardServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<model::ModelConfig> config =
        model::ModelConfig::FromJson(model::testing::SmallMoeConfigJson());
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    ASSERT_TRUE(
        model::WriteSafetensors(dir_.File("model.safetensors"), model::testing::ModelTensors(config_)).ok());
    absl::StatusOr<std::unique_ptr<model::Checkpoint>> checkpoint = model::Checkpoint::Open(dir_.path());
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    checkpoint_ = *std::move(checkpoint);
    auto shard = model::LoadExpertShard(*checkpoint_, config_, /*first_expert=*/1, /*num_experts=*/2);
    ASSERT_TRUE(shard.ok()) << shard.status();
    block_ = std::make_unique<ExpertBlock>(config_, *std::move(shard));
    attention_ = hub_.Endpoint(kAttentionPeer);
    expert_ = hub_.Endpoint(kExpertPeer);
  }

  // A dispatch payload with `groups`, row r of it filled with (r + 1) / 8 + column / 64.
  std::vector<std::byte> Dispatch(const std::vector<ExpertGroup>& groups) const {
    std::vector<std::byte> payload;
    bf16* rows = transport::EncodeMoeMessageHeader(config_.hidden_size, groups, &payload);
    int64_t num_rows = 0;
    for (const ExpertGroup& group : groups) num_rows += group.num_rows;
    for (int64_t r = 0; r < num_rows; ++r) {
      for (int64_t c = 0; c < config_.hidden_size; ++c) {
        rows[r * config_.hidden_size + c] =
            FloatToBF16(static_cast<float>(r + 1) / 8.0f + static_cast<float>(c) / 64.0f);
      }
    }
    return payload;
  }

  static MessageTag DispatchTag(uint64_t step, uint32_t layer) {
    return {.kind = MessageKind::kDispatch,
            .step = step,
            .layer = layer,
            .micro_batch = 0,
            .sender = kAttentionPeer};
  }
  static MessageTag CombineTag(uint64_t step, uint32_t layer) {
    return {
        .kind = MessageKind::kCombine, .step = step, .layer = layer, .micro_batch = 0, .sender = kExpertPeer};
  }

  void SendDispatch(uint64_t step, uint32_t layer, const std::vector<std::byte>& payload) {
    ASSERT_TRUE(attention_->Send(kExpertPeer, DispatchTag(step, layer), payload).ok());
  }

  model::testing::TempDir dir_;
  model::ModelConfig config_;
  std::unique_ptr<model::Checkpoint> checkpoint_;  // the shard's weights are views into it
  std::unique_ptr<ExpertBlock> block_;
  transport::LoopbackHub hub_;
  transport::LoopbackTransport* attention_ = nullptr;
  transport::LoopbackTransport* expert_ = nullptr;
};

TEST_F(ExpertShardServerTest, AnswersADispatchWithTheBlocksCombineUnderTheSameRoundTag) {
  ExpertShardServer server(block_.get(), expert_);
  server.Start();
  const std::vector<std::byte> dispatch = Dispatch({{1, 2}, {2, 3}});
  SendDispatch(/*step=*/7, /*layer=*/1, dispatch);

  absl::StatusOr<Message> combine = attention_->ReceiveTagged(CombineTag(7, 1), absl::Now() + kFailAfter);
  ASSERT_TRUE(combine.ok()) << combine.status();
  absl::StatusOr<std::vector<std::byte>> expected = block_->Serve(1, dispatch);
  ASSERT_TRUE(expected.ok()) << expected.status();
  // The block's combine, stamped with the time the shard held the round (moe_message.h, version 2:
  // the version field and an 8-byte trailer differ).
  ASSERT_EQ(combine->payload.size(), expected->size() + transport::kExpertTimeBytes);
  EXPECT_TRUE(std::equal(expected->begin(), expected->begin() + 4, combine->payload.begin()));
  EXPECT_TRUE(std::equal(expected->begin() + 6, expected->end(), combine->payload.begin() + 6));
  absl::StatusOr<transport::MoeMessageView> view = transport::DecodeMoeMessage(combine->payload);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_TRUE(view->expert_time.has_value());
  server.Stop();
  EXPECT_EQ(server.rounds_served(), 1u);
  EXPECT_EQ(server.rounds_failed(), 0u);
}

TEST_F(ExpertShardServerTest, RoundsThroughReusedBuffersAndScratchAnswerWhatAFreshBlockComputes) {
  // Large, small, large again: the server's answer buffer, the block's scratch and the hub's
  // recycled buffers hold a former round's bytes, which must never reach a later answer.
  const std::vector<std::vector<ExpertGroup>> rounds = {{{1, 6}, {2, 5}}, {{2, 1}}, {{1, 3}, {2, 7}}};
  std::vector<std::vector<std::byte>> expected;
  for (const auto& groups : rounds) {
    auto shard = model::LoadExpertShard(*checkpoint_, config_, /*first_expert=*/1, /*num_experts=*/2);
    ASSERT_TRUE(shard.ok()) << shard.status();
    const ExpertBlock fresh(config_, *std::move(shard));
    absl::StatusOr<std::vector<std::byte>> served = fresh.Serve(1, Dispatch(groups));
    ASSERT_TRUE(served.ok()) << served.status();
    expected.push_back(*std::move(served));
  }
  // The block alone, through one dirty reused buffer.
  std::vector<std::byte> reused(1 << 16, std::byte{0x5a});
  for (size_t r = 0; r < rounds.size(); ++r) {
    ASSERT_TRUE(block_->ServeInto(1, Dispatch(rounds[r]), &reused).ok());
    EXPECT_EQ(reused, expected[r]) << "round " << r;
  }
  // The server over loopback.
  ExpertShardServer server(block_.get(), expert_);
  server.Start();
  for (size_t r = 0; r < rounds.size(); ++r) {
    SendDispatch(/*step=*/r + 1, /*layer=*/1, Dispatch(rounds[r]));
    absl::StatusOr<Message> combine = attention_->ReceiveAny(absl::Now() + kFailAfter);
    ASSERT_TRUE(combine.ok()) << combine.status();
    const std::vector<std::byte>& want = expected[r];
    // The block's combine, stamped (the version field and the 8-byte trailer differ).
    ASSERT_EQ(combine->payload.size(), want.size() + transport::kExpertTimeBytes) << "round " << r;
    EXPECT_TRUE(std::equal(want.begin(), want.begin() + 4, combine->payload.begin())) << "round " << r;
    EXPECT_TRUE(std::equal(want.begin() + 6, want.end(), combine->payload.begin() + 6)) << "round " << r;
  }
  server.Stop();
  EXPECT_EQ(server.rounds_served(), rounds.size());
  // Each served dispatch's buffer went back to the hub, and the next answer's send took it: one is
  // left (this test's attention side gives nothing back).
  EXPECT_EQ(hub_.pooled_buffers(), 1u);
}

TEST_F(ExpertShardServerTest, ObserverIsToldExactlyTheRowsOfEachHostedExpert) {
  RecordingObserver observer;
  ExpertShardServer server(block_.get(), expert_, &observer);
  const std::vector<std::byte> first = Dispatch({{1, 2}, {2, 3}});
  const std::vector<std::byte> second = Dispatch({{2, 4}});
  server.ServeOne({DispatchTag(1, 0), first});
  server.ServeOne({DispatchTag(2, 1), second});

  const std::vector<RecordingObserver::Served> served = observer.served();
  ASSERT_EQ(served.size(), 2u);
  EXPECT_EQ(served[0].layer, 0);
  EXPECT_THAT(served[0].rows_per_expert, ElementsAre(2u, 3u));
  EXPECT_EQ(served[0].bytes_received, first.size());
  EXPECT_EQ(served[0].bytes_sent, first.size());  // the combine has the dispatch's shape
  EXPECT_EQ(served[1].layer, 1);
  EXPECT_THAT(served[1].rows_per_expert, ElementsAre(0u, 4u));
  EXPECT_EQ(served[1].bytes_sent, second.size());
  EXPECT_TRUE(observer.failed().empty());
  EXPECT_EQ(server.rounds_served(), 2u);
}

TEST_F(ExpertShardServerTest, DispatchToAnExpertNotHostedIsAnsweredEmptyAndReportedFailed) {
  RecordingObserver observer;
  ExpertShardServer server(block_.get(), expert_, &observer);
  const std::vector<std::byte> dispatch = Dispatch({{3, 1}});
  server.ServeOne({DispatchTag(5, 1), dispatch});

  absl::StatusOr<Message> combine = attention_->ReceiveTagged(CombineTag(5, 1), absl::Now());
  ASSERT_TRUE(combine.ok()) << combine.status();
  absl::StatusOr<transport::MoeMessageView> view = transport::DecodeMoeMessage(combine->payload);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_TRUE(view->groups.empty());
  ASSERT_EQ(observer.failed().size(), 1u);
  EXPECT_EQ(observer.failed()[0].status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(observer.failed()[0].layer, 1);
  EXPECT_EQ(observer.failed()[0].bytes_received, dispatch.size());
  EXPECT_TRUE(observer.served().empty());
  EXPECT_EQ(server.rounds_failed(), 1u);
  EXPECT_EQ(server.rounds_served(), 0u);
}

TEST_F(ExpertShardServerTest, MessageThatIsNotADispatchIsNotAnswered) {
  RecordingObserver observer;
  ExpertShardServer server(block_.get(), expert_, &observer);
  MessageTag tag = DispatchTag(3, 0);
  tag.kind = MessageKind::kCombine;
  server.ServeOne({tag, Dispatch({{1, 1}})});

  EXPECT_EQ(attention_->ReceiveAny(absl::Now()).status().code(), absl::StatusCode::kUnavailable);
  ASSERT_EQ(observer.failed().size(), 1u);
  EXPECT_EQ(observer.failed()[0].status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(server.rounds_failed(), 1u);
}

TEST_F(ExpertShardServerTest, DrainReturnsAfterTheRoundInProgressIsAnswered) {
  BlockingObserver observer;
  ExpertShardServer server(block_.get(), expert_, &observer);
  server.Start();
  SendDispatch(1, 0, Dispatch({{1, 2}}));
  observer.entered_.WaitForNotification();  // the server is inside the round

  absl::Notification drained;
  uint64_t rounds = 0;
  std::thread drainer([&] {
    rounds = server.Drain();
    drained.Notify();
  });
  EXPECT_FALSE(drained.HasBeenNotified());
  observer.release_.Notify();
  drainer.join();
  EXPECT_EQ(rounds, 1u);
  EXPECT_TRUE(attention_->ReceiveTagged(CombineTag(1, 0), absl::Now()).ok());
}

TEST_F(ExpertShardServerTest, DispatchesAfterDrainStayUnansweredUntilServingStartsAgain) {
  ExpertShardServer server(block_.get(), expert_);
  server.Start();
  SendDispatch(1, 0, Dispatch({{1, 2}}));
  ASSERT_TRUE(attention_->ReceiveTagged(CombineTag(1, 0), absl::Now() + kFailAfter).ok());
  EXPECT_EQ(server.Drain(), 1u);
  EXPECT_EQ(server.Drain(), 1u);  // idempotent

  SendDispatch(2, 0, Dispatch({{2, 1}}));
  EXPECT_EQ(attention_->ReceiveAny(absl::Now()).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(server.rounds_served(), 1u);

  // Nothing took the dispatch out of the transport: serving again answers it.
  server.Start();
  EXPECT_TRUE(attention_->ReceiveTagged(CombineTag(2, 0), absl::Now() + kFailAfter).ok());
  server.Stop();
  EXPECT_EQ(server.rounds_served(), 2u);
}

TEST_F(ExpertShardServerTest, StopShutsTheTransportDown) {
  ExpertShardServer server(block_.get(), expert_);
  server.Start();
  server.Stop();
  server.Stop();  // idempotent
  EXPECT_EQ(expert_->ReceiveAny(absl::Now()).status().code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace moe::engine
