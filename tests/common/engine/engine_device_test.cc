// EngineOptions::device on any machine: a cuda device that cannot be used (no CUDA in the build, no
// driver, fewer GPUs) is FAILED_PRECONDITION naming the device, found before the model is loaded,
// and never a crash; options the CUDA backend cannot run are INVALID_ARGUMENT naming the option.
// (What the CUDA backend computes is tested on a GPU: tests/common/engine/cuda/, label gpu.)
#include <memory>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/engine/expert_compute_factory.h"
#include "common/engine/forward_pass.h"
#include "common/engine/testing/requests.h"
#include "common/transport/nccl/transport_choice.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/util/test_models.h"

namespace moe::engine {
namespace {

using ::testing::HasSubstr;

EngineOptions CudaOptions(int ordinal) {
  EngineOptions options;
  options.kv_cache_bytes = int64_t{64} << 20;
  options.device = kernels::DeviceSpec{kernels::DeviceSpec::Kind::kCuda, ordinal};
  return options;
}

// No machine has 1024 GPUs: refused everywhere, CUDA in the build or not, with the device named.
TEST(EngineDeviceTest, CudaDeviceThatDoesNotExistIsFailedPrecondition) {
  for (const std::string preset : {"tiny", "dense-tiny"}) {
    auto engine = Engine::CreateEmbedded(moe::testing::TestModelDir(preset, "bf16"), CudaOptions(1023));
    ASSERT_FALSE(engine.ok()) << preset;
    EXPECT_EQ(engine.status().code(), absl::StatusCode::kFailedPrecondition) << engine.status();
    EXPECT_THAT(engine.status().message(), HasSubstr("cuda:1023"));
  }
}

// cuda:0: exactly what the device check says. On a machine without a GPU (CI, this workplace) that
// is FAILED_PRECONDITION naming cuda:0, for both engine kinds; with a GPU the engine is created and
// runs a prompt.
TEST(EngineDeviceTest, CudaZeroFollowsTheDeviceCheck) {
  const kernels::DeviceSpec cuda0{kernels::DeviceSpec::Kind::kCuda, 0};
  const absl::Status device = CheckEngineDevice(cuda0);
  for (const std::string preset : {"tiny", "dense-tiny"}) {
    auto engine = Engine::CreateEmbedded(moe::testing::TestModelDir(preset, "bf16"), CudaOptions(0));
    if (!device.ok()) {
      EXPECT_EQ(device.code(), absl::StatusCode::kFailedPrecondition) << device;
      EXPECT_THAT(device.message(), HasSubstr("cuda:0"));
      ASSERT_FALSE(engine.ok()) << preset;
      EXPECT_EQ(engine.status(), device);
      continue;
    }
    ASSERT_TRUE(engine.ok()) << engine.status();
    auto logits = (*engine)->PromptLogits(engine_testing::PseudoRandomPrompt(5, 1));
    ASSERT_TRUE(logits.ok()) << logits.status();
    EXPECT_EQ(static_cast<int64_t>(logits->size()), (*engine)->config().vocab_size);
  }
}

// The NCCL data plane's calls come from the CUDA backend plugin (CreateNcclApi). A cpu device has
// none; a cuda device that does not exist is FAILED_PRECONDITION naming the flag, and in a build with
// CUDA and NCCL it is the plugin's own entry point that says so (it was loaded and answered).
TEST(EngineDeviceTest, NcclApiComesFromThePluginOnlyForAnExistingCudaDevice) {
  const absl::StatusOr<std::unique_ptr<transport::NcclApi>> cpu = CreateNcclApi(kernels::DeviceSpec{});
  EXPECT_EQ(cpu.status().code(), absl::StatusCode::kFailedPrecondition) << cpu.status();
  EXPECT_THAT(cpu.status().message(), HasSubstr("--transport: nccl moves GPU memory"));

  const absl::StatusOr<std::unique_ptr<transport::NcclApi>> missing =
      CreateNcclApi(kernels::DeviceSpec{kernels::DeviceSpec::Kind::kCuda, 1023}, "--transport");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kFailedPrecondition) << missing.status();
  EXPECT_THAT(missing.status().message(), HasSubstr("--transport: nccl"));
  if (BuiltWithCuda() && transport::BuiltWithNccl()) {
    EXPECT_THAT(missing.status().message(), HasSubstr("needs CUDA device 1023, this machine has"));
  }
}

TEST(EngineDeviceTest, CpuDeviceIsAlwaysUsable) {
  EXPECT_TRUE(CheckEngineDevice(kernels::DeviceSpec{}).ok());
  EngineOptions options;
  options.kv_cache_bytes = int64_t{64} << 20;
  auto engine = Engine::CreateEmbedded(moe::testing::TestModelDir("dense-tiny", "bf16"), options);
  ASSERT_TRUE(engine.ok()) << engine.status();
}

// Two micro-batches need the CPU backend: refused with the option named, before the device is probed
// (so the same answer with a GPU or without).
TEST(EngineDeviceTest, TwoMicroBatchesWithCudaIsInvalidArgument) {
  EngineOptions options = CudaOptions(0);
  options.micro_batches = 2;
  auto engine = Engine::CreateEmbedded(moe::testing::TestModelDir("tiny", "bf16"), options);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument) << engine.status();
  EXPECT_THAT(engine.status().message(), HasSubstr("micro_batches"));
  EXPECT_THAT(engine.status().message(), HasSubstr("cuda:0"));
  options.micro_batches = 3;
  engine = Engine::CreateEmbedded(moe::testing::TestModelDir("tiny", "bf16"), options);
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(engine.status().message(), HasSubstr("micro_batches: must be 1 or 2"));
}

}  // namespace
}  // namespace moe::engine
