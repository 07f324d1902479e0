// The workers' device and data-plane flags (common/rpc/worker_main/data_plane_flags.h): what they
// accept and build, and that each refusal names its flag, in the order the workers check them.
#include "common/rpc/worker_main/data_plane_flags.h"

#include <string>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

ABSL_DECLARE_FLAG(std::string, ucx_tls);
ABSL_DECLARE_FLAG(std::string, ucx_poll_spin_us);

namespace moe::rpc {
namespace {

using ::testing::HasSubstr;

TEST(WorkerDataPlaneFlagsTest, UcxOnTheCpuCarriesTheUcxFlagsIntoUcxOptions) {
  auto plane = ParseWorkerDataPlaneFlags(
      {.device = "cpu", .transport = "ucx", .ucx_tls = "tcp", .ucx_poll_spin_us = "auto"});
  ASSERT_TRUE(plane.ok()) << plane.status();
  EXPECT_FALSE(plane->device.is_cuda());
  EXPECT_EQ(plane->nccl_api, nullptr);
  EXPECT_EQ(plane->ucx.tls, "tcp");
  EXPECT_EQ(plane->ucx.poll_spin, std::nullopt);  // adaptive
  // The rest of UcxOptions stays at its defaults.
  EXPECT_EQ(plane->ucx.send_timeout, transport::UcxOptions().send_timeout);

  plane = ParseWorkerDataPlaneFlags({.device = "cpu", .transport = "ucx", .ucx_poll_spin_us = "25"});
  ASSERT_TRUE(plane.ok()) << plane.status();
  EXPECT_EQ(plane->ucx.tls, "");
  EXPECT_EQ(plane->ucx.poll_spin, absl::Microseconds(25));
  plane = ParseWorkerDataPlaneFlags({.device = "cpu", .transport = "ucx", .ucx_poll_spin_us = "0"});
  ASSERT_TRUE(plane.ok()) << plane.status();
  EXPECT_EQ(plane->ucx.poll_spin, absl::ZeroDuration());
}

TEST(WorkerDataPlaneFlagsTest, ABadDeviceIsRefusedFirstNamingTheFlag) {
  auto plane = ParseWorkerDataPlaneFlags({.device = "gpu", .transport = "rdma", .ucx_poll_spin_us = "fast"});
  EXPECT_EQ(plane.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plane.status().message(), HasSubstr("--device: 'gpu' is not a device"));
  // No such GPU here (no CUDA in the build, no driver or fewer than 1024 devices).
  plane = ParseWorkerDataPlaneFlags({.device = "cuda:1023", .transport = "nccl", .ucx_poll_spin_us = "auto"});
  EXPECT_EQ(plane.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(plane.status().message(), HasSubstr("--device"));
  EXPECT_THAT(plane.status().message(), HasSubstr("cuda:1023"));
}

TEST(WorkerDataPlaneFlagsTest, ATransportTheDeviceCannotUseIsRefusedNamingTheFlag) {
  auto plane = ParseWorkerDataPlaneFlags({.device = "cpu", .transport = "nccl", .ucx_poll_spin_us = "fast"});
  EXPECT_EQ(plane.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plane.status().message(),
              HasSubstr("--transport: nccl moves GPU memory and needs --device cuda"));
  plane = ParseWorkerDataPlaneFlags({.device = "cpu", .transport = "rdma", .ucx_poll_spin_us = "auto"});
  EXPECT_EQ(plane.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plane.status().message(),
              HasSubstr("--transport: 'rdma' is not a data plane; accepted: ucx, nccl"));
}

TEST(WorkerDataPlaneFlagsTest, APollSpinOutOfRangeIsRefusedNamingTheFlag) {
  for (const char* spin : {"-1", "10001", "fast", ""}) {
    auto plane = ParseWorkerDataPlaneFlags({.device = "cpu", .transport = "ucx", .ucx_poll_spin_us = spin});
    EXPECT_EQ(plane.status().code(), absl::StatusCode::kInvalidArgument) << spin;
    EXPECT_THAT(plane.status().message(),
                HasSubstr("--ucx_poll_spin_us must be auto or an integer in [0, 10000]"))
        << spin;
  }
}

// The workers' entry point reads --ucx_tls and --ucx_poll_spin_us, defined beside it.
TEST(WorkerDataPlaneFlagsTest, FromFlagsReadsTheUcxFlags) {
  absl::SetFlag(&FLAGS_ucx_tls, "sm,self");
  absl::SetFlag(&FLAGS_ucx_poll_spin_us, "40");
  auto plane = WorkerDataPlaneFromFlags("cpu", "ucx");
  ASSERT_TRUE(plane.ok()) << plane.status();
  EXPECT_EQ(plane->ucx.tls, "sm,self");
  EXPECT_EQ(plane->ucx.poll_spin, absl::Microseconds(40));

  absl::SetFlag(&FLAGS_ucx_poll_spin_us, "fast");
  plane = WorkerDataPlaneFromFlags("cpu", "ucx");
  EXPECT_EQ(plane.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plane.status().message(), HasSubstr("--ucx_poll_spin_us"));
  EXPECT_EQ(WorkerDataPlaneFromFlags("cpu", "nccl").status().code(), absl::StatusCode::kInvalidArgument);
  absl::SetFlag(&FLAGS_ucx_tls, "");
  absl::SetFlag(&FLAGS_ucx_poll_spin_us, "auto");
}

}  // namespace
}  // namespace moe::rpc
