#include "services/attention_worker/expert_connector.h"

#include "gtest/gtest.h"

namespace moe::services {
namespace {

v1::ExpertWorkerInfo Info(int rank, int first, int count) {
  v1::ExpertWorkerInfo info;
  info.set_rank(rank);
  info.set_num_expert_workers(3);
  info.set_first_expert(first);
  info.set_num_experts(count);
  info.set_peer_id(1000 + rank);
  info.set_data_plane(v1::DATA_PLANE_UCX);
  info.set_model_fingerprint("f");
  return info;
}

TEST(ValidateExpertInfoTest, AcceptsTheUnevenSplitOf128OverThree) {
  EXPECT_TRUE(ValidateExpertInfo(Info(0, 0, 43), 0, 3, 128, "f").ok());
  EXPECT_TRUE(ValidateExpertInfo(Info(1, 43, 43), 1, 3, 128, "f").ok());
  EXPECT_TRUE(ValidateExpertInfo(Info(2, 86, 42), 2, 3, 128, "f").ok());
}

TEST(ValidateExpertInfoTest, RejectsARangeThatDoesNotTile) {
  const absl::Status status = ValidateExpertInfo(Info(2, 85, 43), 2, 3, 128, "f");
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(status.message(), "expert worker 2: first_expert is 85, expected 86");
}

// With two copies of each shard, four workers hold two shards: worker w hosts shard w mod 2.
TEST(ValidateExpertInfoTest, WithReplicasEachWorkerHostsItsShardAndReportsTheReplicaCount) {
  auto info = [](int rank, int first, int count, int replicas) {
    v1::ExpertWorkerInfo i = Info(rank, first, count);
    i.set_num_expert_workers(4);
    i.set_expert_replicas(replicas);
    return i;
  };
  EXPECT_TRUE(ValidateExpertInfo(info(0, 0, 64, 2), 0, 4, 128, "f", 2).ok());
  EXPECT_TRUE(ValidateExpertInfo(info(1, 64, 64, 2), 1, 4, 128, "f", 2).ok());
  EXPECT_TRUE(ValidateExpertInfo(info(2, 0, 64, 2), 2, 4, 128, "f", 2).ok());
  EXPECT_TRUE(ValidateExpertInfo(info(3, 64, 64, 2), 3, 4, 128, "f", 2).ok());
  EXPECT_EQ(ValidateExpertInfo(info(2, 64, 32, 4), 2, 4, 128, "f", 2).message(),
            "expert worker 2: expert_replicas is 4, expected 2");
  // A worker started without --expert_replicas (one copy) does not join a replicated placement.
  EXPECT_EQ(ValidateExpertInfo(info(2, 64, 32, 0), 2, 4, 128, "f", 2).message(),
            "expert worker 2: expert_replicas is 1, expected 2");
  EXPECT_EQ(ValidateExpertInfo(info(2, 64, 64, 2), 2, 4, 128, "f", 2).message(),
            "expert worker 2: first_expert is 64, expected 0");
}

// A joinable worker (rank past the N home ones) reports the home count and hosts shard rank mod S.
TEST(ValidateExpertInfoTest, AJoinableWorkerIsValidatedAgainstTheHomeLayout) {
  v1::ExpertWorkerInfo joined = Info(3, 0, 43);
  EXPECT_TRUE(ValidateExpertInfo(joined, 3, 3, 128, "f").ok());
  EXPECT_EQ(ValidateExpertInfo(Info(4, 0, 43), 4, 3, 128, "f").message(),
            "expert worker 4: first_expert is 0, expected 43");
  joined.set_num_expert_workers(4);
  EXPECT_EQ(ValidateExpertInfo(joined, 3, 3, 128, "f").message(),
            "expert worker 3: num_expert_workers is 4, expected 3");
}

TEST(ValidateExpertInfoTest, RejectsWrongRankPeerAndFingerprint) {
  EXPECT_EQ(ValidateExpertInfo(Info(1, 43, 43), 0, 3, 128, "f").message(),
            "expert worker 0: rank is 1, expected 0");
  v1::ExpertWorkerInfo info = Info(0, 0, 43);
  info.set_peer_id(7);
  EXPECT_EQ(ValidateExpertInfo(info, 0, 3, 128, "f").message(),
            "expert worker 0: peer_id is 7, expected 1000");
  EXPECT_EQ(ValidateExpertInfo(Info(0, 0, 43), 0, 3, 128, "g").message(),
            "expert worker 0: model_fingerprint is f, expected g");
  info = Info(0, 0, 43);
  info.set_num_expert_workers(2);
  EXPECT_EQ(ValidateExpertInfo(info, 0, 3, 128, "f").message(),
            "expert worker 0: num_expert_workers is 2, expected 3");
}

}  // namespace
}  // namespace moe::services
