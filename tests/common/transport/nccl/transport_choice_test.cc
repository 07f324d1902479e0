// --transport: the combinations of data plane, device and build the workers and moectl refuse.
#include "common/transport/nccl/transport_choice.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe::transport {
namespace {

using ::testing::HasSubstr;

TEST(TransportChoiceTest, UcxIsAcceptedWithEveryDeviceAndBuild) {
  for (bool cuda : {false, true}) {
    for (bool nccl : {false, true}) EXPECT_TRUE(CheckTransportChoice("ucx", cuda, nccl).ok());
  }
}

TEST(TransportChoiceTest, NcclNamesWhatIsMissing) {
  const absl::Status cpu = CheckTransportChoice("nccl", /*device_is_cuda=*/false, /*have_nccl=*/true);
  EXPECT_EQ(cpu.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(cpu.message(), HasSubstr("--transport: nccl moves GPU memory and needs --device cuda"));
  const absl::Status no_nccl = CheckTransportChoice("nccl", true, /*have_nccl=*/false);
  EXPECT_EQ(no_nccl.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(no_nccl.message(), HasSubstr("this build has no NCCL"));
  // With a GPU and NCCL the workers serve over it (their plugin and device are checked later).
  EXPECT_TRUE(CheckTransportChoice("nccl", true, true).ok());
}

TEST(TransportChoiceTest, AnythingElseNamesTheFlagAndTheAcceptedValues) {
  const absl::Status s = CheckTransportChoice("rdma", true, true, "--transport");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "--transport: 'rdma' is not a data plane; accepted: ucx, nccl (GPU workers)");
  EXPECT_EQ(CheckTransportChoice("NCCL", true, true).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moe::transport
