#include "common/engine/embedded_experts.h"

#include <memory>
#include <string>

#include "absl/time/clock.h"
#include "common/engine/engine.h"
#include "common/engine/expert_compute_factory.h"
#include "common/kernels/device_spec.h"
#include "gtest/gtest.h"
#include "tests/util/test_models.h"

namespace moe::engine {
namespace {

struct Loaded {
  model::ModelConfig config;
  std::unique_ptr<model::Checkpoint> checkpoint;
};

Loaded Load(const std::string& preset) {
  const std::string dir = moe::testing::TestModelDir(preset, "bf16");
  Loaded loaded;
  auto config = model::ModelConfig::FromFile(dir + "/config.json");
  EXPECT_TRUE(config.ok()) << config.status();
  if (config.ok()) loaded.config = *config;
  auto checkpoint = model::Checkpoint::Open(dir);
  EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
  if (checkpoint.ok()) loaded.checkpoint = *std::move(checkpoint);
  return loaded;
}

TEST(EmbeddedExpertsTest, SplitsTheExpertsIntoContiguousShardsAtConsecutivePeers) {
  Loaded tiny = Load("tiny");
  ASSERT_NE(tiny.checkpoint, nullptr);
  auto experts = EmbeddedExperts::Create(*tiny.checkpoint, tiny.config, 3);
  ASSERT_TRUE(experts.ok()) << experts.status();
  const ExpertPlacement& placement = (*experts)->placement();
  EXPECT_EQ(placement.num_experts(), tiny.config.num_experts);
  ASSERT_EQ(placement.num_workers(), 3);
  ASSERT_EQ((*experts)->blocks().size(), 3u);
  int64_t next = 0;
  for (int w = 0; w < 3; ++w) {
    EXPECT_EQ(placement.peer(w), kFirstExpertPeerId + w);
    EXPECT_EQ((*experts)->blocks()[w]->first_expert(), next);
    EXPECT_EQ((*experts)->blocks()[w]->num_experts(), placement.range(w).count);
    next += placement.range(w).count;
  }
  EXPECT_EQ(next, tiny.config.num_experts);
  EXPECT_EQ((*experts)->attention_endpoint()->self(), EmbeddedExperts::kAttentionPeer);
}

TEST(EmbeddedExpertsTest, ShardsListsEveryWorkersComputeOnTheCpu) {
  Loaded tiny = Load("tiny");
  ASSERT_NE(tiny.checkpoint, nullptr);
  auto experts = EmbeddedExperts::Create(*tiny.checkpoint, tiny.config, 2, /*replicas=*/1,
                                         *kernels::ParseDeviceSpec("cpu"));
  ASSERT_TRUE(experts.ok()) << experts.status();
  ASSERT_EQ((*experts)->shards().size(), 2u);
  for (size_t w = 0; w < 2; ++w) EXPECT_EQ((*experts)->shards()[w], (*experts)->blocks()[w].get());
}

// No machine has 1024 GPUs: cuda:1023 is refused, naming the device, before any weight is read;
// where there is no GPU (or no CUDA in the build) so is cuda:0.
TEST(EmbeddedExpertsTest, AMissingCudaDeviceIsFailedPreconditionNamingIt) {
  Loaded tiny = Load("tiny");
  ASSERT_NE(tiny.checkpoint, nullptr);
  auto far =
      EmbeddedExperts::Create(*tiny.checkpoint, tiny.config, 2, 1, *kernels::ParseDeviceSpec("cuda:1023"));
  ASSERT_FALSE(far.ok());
  EXPECT_EQ(far.status().code(), absl::StatusCode::kFailedPrecondition) << far.status();
  EXPECT_NE(far.status().message().find("cuda:1023"), std::string::npos) << far.status();
  // In a CUDA build the refusal comes from the CUDA backend plugin (lib/libmoe_cuda_backend.so,
  // loaded on demand), not from failing to find it.
  if (BuiltWithCuda()) {
    EXPECT_EQ(far.status().message().find("could not be loaded"), std::string::npos) << far.status();
  }

  const kernels::DeviceSpec cuda0 = *kernels::ParseDeviceSpec("cuda");
  if (CheckComputeDevice(cuda0).ok()) return;  // a GPU machine: cuda:0 is usable
  auto none = EmbeddedExperts::Create(*tiny.checkpoint, tiny.config, 2, 1, cuda0);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kFailedPrecondition) << none.status();
  EXPECT_NE(none.status().message().find("cuda:0"), std::string::npos) << none.status();
}

TEST(EmbeddedExpertsTest, EveryShardAnswersADispatchWithACombineOfTheSameRound) {
  Loaded tiny = Load("tiny");
  ASSERT_NE(tiny.checkpoint, nullptr);
  auto experts = EmbeddedExperts::Create(*tiny.checkpoint, tiny.config, 2);
  ASSERT_TRUE(experts.ok()) << experts.status();
  transport::ActivationTransport* endpoint = (*experts)->attention_endpoint();
  for (int w = 0; w < 2; ++w) {
    // An empty payload is a malformed dispatch: the server still answers (with an empty combine),
    // so this checks that each shard's serving thread runs and replies to the sender's round.
    const transport::MessageTag dispatch{transport::MessageKind::kDispatch, 7, 1, 0,
                                         EmbeddedExperts::kAttentionPeer};
    ASSERT_TRUE(endpoint->Send((*experts)->placement().peer(w), dispatch, {}).ok());
    const transport::MessageTag combine{transport::MessageKind::kCombine, 7, 1, 0, kFirstExpertPeerId + w};
    auto reply = endpoint->ReceiveTagged(combine, absl::Now() + absl::Seconds(30));
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(reply->tag, combine);
  }
}

TEST(EmbeddedExpertsTest, ADisconnectedShardRefusesSendsWithUnavailable) {
  Loaded tiny = Load("tiny");
  ASSERT_NE(tiny.checkpoint, nullptr);
  auto experts = EmbeddedExperts::Create(*tiny.checkpoint, tiny.config, 2);
  ASSERT_TRUE(experts.ok()) << experts.status();
  (*experts)->DisconnectShardForTest(1);
  const transport::MessageTag dispatch{transport::MessageKind::kDispatch, 1, 0, 0,
                                       EmbeddedExperts::kAttentionPeer};
  EXPECT_TRUE((*experts)->attention_endpoint()->Send(kFirstExpertPeerId + 0, dispatch, {}).ok());
  EXPECT_EQ((*experts)->attention_endpoint()->Send(kFirstExpertPeerId + 1, dispatch, {}).code(),
            absl::StatusCode::kUnavailable);
}

TEST(EmbeddedExpertsTest, RejectsShardCountsOutsideOneToTheNumberOfExperts) {
  Loaded tiny = Load("tiny");
  ASSERT_NE(tiny.checkpoint, nullptr);
  for (int shards : {0, -1, static_cast<int>(tiny.config.num_experts) + 1}) {
    auto experts = EmbeddedExperts::Create(*tiny.checkpoint, tiny.config, shards);
    EXPECT_EQ(experts.status().code(), absl::StatusCode::kInvalidArgument) << shards;
  }
  EXPECT_TRUE(
      EmbeddedExperts::Create(*tiny.checkpoint, tiny.config, static_cast<int>(tiny.config.num_experts)).ok());
}

TEST(ExpertPlacementTest, ReplicasSpreadEachShardOverWorkersAShardCountApart) {
  const ExpertPlacement placement(128, {1000, 1001, 1002, 1003, 1004, 1005}, /*replicas=*/2);
  EXPECT_EQ(placement.num_shards(), 3);
  for (int64_t w = 0; w < 6; ++w) {
    EXPECT_EQ(placement.shard_of_worker(w), w % 3);
    EXPECT_EQ(placement.range(w).first, ExpertPlacement::RangeOf(128, 3, w % 3).first);
  }
  EXPECT_EQ(placement.replica(1, 0), 1);
  EXPECT_EQ(placement.replica(1, 1), 4);
  for (int64_t e = 0; e < 128; ++e) {
    const ExpertRange range = placement.range(placement.shard_of_expert(e));
    EXPECT_TRUE(e >= range.first && e < range.first + range.count) << e;
  }
  EXPECT_TRUE(ExpertPlacement::Validate(128, 6, 2).ok());
  EXPECT_TRUE(ExpertPlacement::Validate(128, 3, 1).ok());
  EXPECT_EQ(ExpertPlacement::Validate(128, 5, 2).message(),
            "--expert_replicas: 2 replicas need a multiple of 2 expert workers, got 5");
  EXPECT_EQ(ExpertPlacement::Validate(128, 4, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ExpertPlacement::Validate(4, 10, 2).message(), "expert workers: 5 shards for 4 experts");
}

TEST(ExpertPlacementTest, JoinableWorkersHostOnlyExtrasAndLeaveTheHomeShardsAlone) {
  const ExpertPlacement home(128, {1000, 1001, 1002, 1003}, /*replicas=*/2);
  absl::StatusOr<ExpertPlacement> joined = home.WithJoinableWorkers({1004, 1005});
  ASSERT_TRUE(joined.ok()) << joined.status();
  EXPECT_EQ(joined->num_workers(), 6);
  EXPECT_EQ(joined->num_home_workers(), 4);
  EXPECT_EQ(joined->num_shards(), 2);
  EXPECT_EQ(joined->peer(5), 1005);
  for (int64_t w = 0; w < 4; ++w) {
    EXPECT_FALSE(joined->joinable(w));
    EXPECT_EQ(joined->range(w).first, home.range(w).first) << w;
    EXPECT_EQ(joined->range(w).count, home.range(w).count) << w;
  }
  EXPECT_TRUE(joined->joinable(4));
  EXPECT_EQ(joined->shard_of_worker(4), -1);
  EXPECT_EQ(joined->range(5).count, 0);
  // Without extras a joinable worker hosts nothing: every expert's hosts are its shard's replicas.
  for (int64_t e = 0; e < 128; ++e) EXPECT_EQ(joined->Hosts(e), home.Hosts(e)) << e;
  // It holds no expert at home, so any expert may be copied to it; the hosts end with it.
  std::vector<std::vector<int64_t>> extras(128);
  extras[0] = {4};
  extras[127] = {4, 5};
  absl::StatusOr<ExpertPlacement> with = joined->WithExtras(extras, 1);
  ASSERT_TRUE(with.ok()) << with.status();
  EXPECT_EQ(with->Hosts(0), (std::vector<int64_t>{0, 2, 4}));
  EXPECT_EQ(with->Hosts(127), (std::vector<int64_t>{1, 3, 4, 5}));
  EXPECT_EQ(with->extra_experts(4), (std::vector<int64_t>{0, 127}));
  extras[1] = {6};
  EXPECT_EQ(joined->WithExtras(extras, 2).status().message(), "extras[1]: worker 6 is not in [0, 6)");
  // Bad joinable peers are refused naming the entry.
  EXPECT_EQ(home.WithJoinableWorkers({1004, 1001}).status().message(),
            "joinable_peers[1]: peer id 1001 is already a worker's");
  EXPECT_EQ(home.WithJoinableWorkers({-3}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(EmbeddedExpertsTest, RejectsADenseModel) {
  Loaded dense = Load("dense-tiny");
  ASSERT_NE(dense.checkpoint, nullptr);
  auto experts = EmbeddedExperts::Create(*dense.checkpoint, dense.config, 1);
  EXPECT_EQ(experts.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moe::engine
