#include "common/kernels/device_spec.h"

#include "gtest/gtest.h"

namespace moe::kernels {
namespace {

TEST(DeviceSpecTest, ParsesCpuCudaAndOrdinals) {
  EXPECT_EQ(*ParseDeviceSpec("cpu"), DeviceSpec{});
  EXPECT_EQ(*ParseDeviceSpec("cuda"), (DeviceSpec{DeviceSpec::Kind::kCuda, 0}));
  EXPECT_EQ(*ParseDeviceSpec("cuda:0"), (DeviceSpec{DeviceSpec::Kind::kCuda, 0}));
  EXPECT_EQ(*ParseDeviceSpec("cuda:7"), (DeviceSpec{DeviceSpec::Kind::kCuda, 7}));
  EXPECT_EQ(*ParseDeviceSpec("cuda:1023"), (DeviceSpec{DeviceSpec::Kind::kCuda, 1023}));
  EXPECT_EQ(ParseDeviceSpec("cuda:7")->ToString(), "cuda:7");
  EXPECT_EQ(ParseDeviceSpec("cuda")->ToString(), "cuda:0");
  EXPECT_EQ(ParseDeviceSpec("cpu")->ToString(), "cpu");
  EXPECT_TRUE(ParseDeviceSpec("cuda:3")->is_cuda());
  EXPECT_FALSE(ParseDeviceSpec("cpu")->is_cuda());
}

TEST(DeviceSpecTest, RejectsEverythingElseNamingTheFlag) {
  for (const char* bad : {"", "gpu", "CPU", "Cuda", "cuda:", "cuda:-1", "cuda:+1", "cuda:1x", "cuda: 1",
                          " cuda", "cuda:1024", "cuda:99999999999", "cuda:0:1", "cpu:0", "rocm:0"}) {
    const absl::StatusOr<DeviceSpec> spec = ParseDeviceSpec(bad, "--device");
    ASSERT_FALSE(spec.ok()) << "'" << bad << "'";
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(spec.status().message().find("--device"), absl::string_view::npos) << spec.status();
    EXPECT_NE(spec.status().message().find("cpu, cuda or cuda:N"), absl::string_view::npos) << spec.status();
  }
  EXPECT_NE(ParseDeviceSpec("tpu", "MOE_DEVICE").status().message().find("MOE_DEVICE: 'tpu'"),
            absl::string_view::npos);
}

}  // namespace
}  // namespace moe::kernels
