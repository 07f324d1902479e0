// Integration: a real moe-expert-worker process: shard map over gRPC, Connect validation, and a
// clean exit on SIGTERM.
#include <sys/wait.h>

#include <csignal>

#include "absl/time/clock.h"
#include "common/model/model_fingerprint.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "moe/v1/expert_control.grpc.pb.h"
#include "tests/services/process_helper.h"
#include "tests/util/test_models.h"

namespace moe::services {
namespace {

TEST(ExpertWorkerProcessTest, ServesItsShardOfAnUnevenSplitAndExitsZeroOnSigterm) {
  const std::string& model = moe::testing::TestModelDir("tiny", "bf16");
  const int port = moe::testing::FreePort();
  const std::string address = moe::testing::LocalAddress(port);
  auto child =
      moe::testing::ChildProcess::Start(moe::testing::BinaryPath("moe-expert-worker"),
                                        {"--model", model, "--rank", "2", "--num_expert_workers", "3",
                                         "--listen", address, "--metrics_port", "0", "--insecure"});
  ASSERT_TRUE(child.ok());
  ASSERT_TRUE(moe::testing::WaitForHealth(address, "readiness", true, absl::Now() + absl::Seconds(60)).ok());
  EXPECT_TRUE(moe::testing::IsServing(address, "startup"));

  auto stub = v1::ExpertControl::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  v1::ExpertWorkerInfo info;
  ASSERT_TRUE(stub->GetInfo(&context, v1::GetInfoRequest(), &info).ok());
  EXPECT_EQ(info.rank(), 2);
  EXPECT_EQ(info.num_expert_workers(), 3);
  EXPECT_EQ(info.peer_id(), 1002);
  EXPECT_EQ(info.data_plane(), v1::DATA_PLANE_UCX);
  EXPECT_FALSE(info.address().empty());
  EXPECT_EQ(info.model_fingerprint(), *model::ModelFingerprint(model));
  // tiny has the real 128 experts: 43 + 43 + 42.
  EXPECT_EQ(info.first_expert(), 86);
  EXPECT_EQ(info.num_experts(), 42);

  grpc::ClientContext bad_context;
  v1::ConnectRequest bad;
  bad.set_peer_id(0);
  bad.set_address("not a ucx address");
  v1::ConnectResponse response;
  EXPECT_EQ(stub->Connect(&bad_context, bad, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  grpc::ClientContext wrong_model;
  bad.set_model_fingerprint("fnv1a64:0000000000000000");
  EXPECT_EQ(stub->Connect(&wrong_model, bad, &response).error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  (*child)->Signal(SIGTERM);
  const std::optional<int> status = (*child)->Wait(absl::Seconds(10));
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0);
}

}  // namespace
}  // namespace moe::services
