// The engine on cuda:0 (CudaAttentionBlock) against the CPU engine, for the MoE and the dense test
// models in BF16 and FP8 (docs/gpu.md#the-engine-device-seam):
//   - PromptLogits: relative max difference <= 2e-2 (BF16) / 5e-2 (FP8) of the CPU's largest logit
//     (cuBLASLt's accumulation order, docs/gpu.md#numerics), and the same argmax wherever the CPU's
//     top-2 gap exceeds that tolerance (elsewhere the GPU's pick must be one of the CPU's near-ties);
//   - greedy 32-token continuations identical up to the first step where the CPU's top-2 gap is
//     within the tolerance (after which the two may legitimately diverge);
//   - on the GPU itself, bit-identical logits for a prompt alone, in a batch, and prefilled in
//     chunks (the kernels' batch invariance, cuda_kernels.h), and requests through Step();
//   - errors: a KV cache larger than the device, an ordinal past the device count.
// Skips with the reason where there is no usable CUDA device.
#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/engine/testing/requests.h"
#include "common/kernels/cuda/cuda_kernels.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/kernels/cuda/device_probe.h"
#include "tests/util/test_models.h"

namespace moe::engine {
namespace {

using engine_testing::GreedyRequest;
using engine_testing::PseudoRandomPrompt;
using ::testing::HasSubstr;

struct Case {
  std::string preset;
  std::string dtype;
  double tolerance;  // relative to the CPU's largest |logit|
};

// gtest_discover_tests puts the printed parameter into the CTest name: keep it short.
void PrintTo(const Case& c, std::ostream* os) {
  *os << c.preset << " " << c.dtype;
}

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  std::string name = info.param.preset + "_" + info.param.dtype;
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

std::unique_ptr<Engine> MakeEngine(const Case& c, bool cuda, EngineOptions options = {}) {
  options.kv_cache_bytes = int64_t{64} << 20;
  if (cuda) options.device = kernels::DeviceSpec{kernels::DeviceSpec::Kind::kCuda, 0};
  auto engine = Engine::CreateEmbedded(moe::testing::TestModelDir(c.preset, c.dtype), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

float MaxAbs(const std::vector<float>& v) {
  float m = 0.0f;
  for (float x : v) m = std::max(m, std::fabs(x));
  return m;
}

double RelativeMaxDiff(const std::vector<float>& got, const std::vector<float>& want) {
  double diff = 0.0;
  for (size_t i = 0; i < want.size(); ++i) diff = std::max(diff, std::fabs(double{got[i]} - want[i]));
  return diff / std::max(1e-30, double{MaxAbs(want)});
}

int64_t Argmax(const std::vector<float>& v) {
  return std::max_element(v.begin(), v.end()) - v.begin();
}

// (top1 - top2) / max|v|.
double RelativeTop2Gap(const std::vector<float>& v) {
  std::vector<float> top(v);
  std::partial_sort(top.begin(), top.begin() + 2, top.end(), std::greater<float>());
  return (double{top[0]} - top[1]) / std::max(1e-30, double{MaxAbs(v)});
}

// Compares one prompt's logits (failures are reported with `what`).
void ExpectCloseLogits(const std::vector<float>& gpu, const std::vector<float>& cpu, double tolerance,
                       const std::string& what) {
  ASSERT_EQ(gpu.size(), cpu.size()) << what;
  EXPECT_LE(RelativeMaxDiff(gpu, cpu), tolerance) << what;
  const int64_t g = Argmax(gpu), c = Argmax(cpu);
  if (RelativeTop2Gap(cpu) > tolerance) {
    EXPECT_EQ(g, c) << what << ": the CPU's top-2 gap exceeds the tolerance";
  } else {
    // A near-tie on the CPU: the GPU's pick must be one of the tied tokens.
    EXPECT_LE((double{cpu[static_cast<size_t>(c)]} - cpu[static_cast<size_t>(g)]) / MaxAbs(cpu), tolerance)
        << what;
  }
}

// Runs one greedy request to completion; returns its tokens and each step's logits.
void RunGreedy(Engine& engine, const std::vector<int32_t>& prompt, int64_t max_new_tokens,
               std::vector<int32_t>* tokens, std::vector<std::vector<float>>* step_logits) {
  ASSERT_TRUE(engine.AddRequest(GreedyRequest("g", prompt, max_new_tokens)).ok());
  for (int guard = 0; engine.HasWork() && guard < 10000; ++guard) {
    for (const TokenEvent& e : engine.Step()) {
      ASSERT_TRUE(e.error.ok()) << e.error;
      if (e.token_id < 0) continue;
      tokens->push_back(e.token_id);
      if (step_logits != nullptr) step_logits->push_back(engine.last_step_logits());
    }
  }
  ASSERT_FALSE(engine.HasWork());
}

class EngineCudaTest : public ::testing::TestWithParam<Case> {};

TEST_P(EngineCudaTest, PromptLogitsMatchTheCpuEngine) {
  MOE_REQUIRE_CUDA_DEVICE();
  const Case& c = GetParam();
  auto cpu = MakeEngine(c, false);
  auto gpu = MakeEngine(c, true);
  ASSERT_TRUE(cpu && gpu);
  for (int64_t length : {1, 7, 33, 100, 300, 600}) {
    const std::vector<int32_t> prompt = PseudoRandomPrompt(length, static_cast<uint32_t>(length));
    auto want = cpu->PromptLogits(prompt);
    auto got = gpu->PromptLogits(prompt);
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_TRUE(got.ok()) << got.status();
    ExpectCloseLogits(*got, *want, c.tolerance, "prompt of " + std::to_string(length));
  }
}

TEST_P(EngineCudaTest, GreedyContinuationMatchesWhileTheCpuIsDecisive) {
  MOE_REQUIRE_CUDA_DEVICE();
  const Case& c = GetParam();
  auto cpu = MakeEngine(c, false);
  auto gpu = MakeEngine(c, true);
  ASSERT_TRUE(cpu && gpu);
  int compared = 0;
  for (uint32_t seed : {1u, 2u, 3u}) {
    const std::vector<int32_t> prompt = PseudoRandomPrompt(20, seed);
    std::vector<int32_t> want, got;
    std::vector<std::vector<float>> want_logits;
    RunGreedy(*cpu, prompt, 32, &want, &want_logits);
    RunGreedy(*gpu, prompt, 32, &got, nullptr);
    ASSERT_EQ(want.size(), 32u);
    ASSERT_EQ(got.size(), 32u);
    for (size_t i = 0; i < want.size(); ++i) {
      if (RelativeTop2Gap(want_logits[i]) <= c.tolerance) break;  // a near-tie: may diverge from here
      ASSERT_EQ(got[i], want[i]) << "seed " << seed << ", token " << i;
      ++compared;
    }
  }
  RecordProperty("tokens_compared", compared);
  std::printf("%s %s: %d of 96 greedy tokens compared (the rest follow a CPU near-tie)\n", c.preset.c_str(),
              c.dtype.c_str(), compared);
}

TEST_P(EngineCudaTest, BatchLogitsEqualPromptLogitsBitForBit) {
  MOE_REQUIRE_CUDA_DEVICE();
  auto gpu = MakeEngine(GetParam(), true);
  ASSERT_TRUE(gpu);
  const std::vector<std::vector<int32_t>> prompts = {PseudoRandomPrompt(3, 11), PseudoRandomPrompt(17, 12),
                                                     PseudoRandomPrompt(40, 13), PseudoRandomPrompt(1, 14)};
  auto batch = gpu->BatchLogits(prompts);
  ASSERT_TRUE(batch.ok()) << batch.status();
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto alone = gpu->PromptLogits(prompts[i]);
    ASSERT_TRUE(alone.ok()) << alone.status();
    EXPECT_EQ((*batch)[i], *alone) << "prompt " << i << " (relative max diff "
                                   << RelativeMaxDiff((*batch)[i], *alone) << ")";
  }
}

TEST_P(EngineCudaTest, ChunkedPrefillEqualsWholePrefillBitForBit) {
  MOE_REQUIRE_CUDA_DEVICE();
  EngineOptions chunked;
  chunked.max_step_tokens = 16;
  auto whole = MakeEngine(GetParam(), true);
  auto chunks = MakeEngine(GetParam(), true, chunked);
  ASSERT_TRUE(whole && chunks);
  const std::vector<int32_t> prompt = PseudoRandomPrompt(100, 21);
  auto a = whole->PromptLogits(prompt);
  auto b = chunks->PromptLogits(prompt);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b) << "relative max diff " << RelativeMaxDiff(*b, *a);
}

// Several requests through Step() (prefill and batched decode mixed): each finishes with its full
// length and the tokens it gets alone.
TEST_P(EngineCudaTest, StepRunsRequestsEndToEnd) {
  MOE_REQUIRE_CUDA_DEVICE();
  auto gpu = MakeEngine(GetParam(), true);
  ASSERT_TRUE(gpu);
  std::map<std::string, std::vector<int32_t>> together;
  std::map<std::string, FinishReason> finish;
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(
        gpu->AddRequest(GreedyRequest("r" + std::to_string(i),
                                      PseudoRandomPrompt(5 + 9 * i, static_cast<uint32_t>(30 + i)), 12))
            .ok());
  }
  for (int guard = 0; gpu->HasWork() && guard < 1000; ++guard) {
    for (const TokenEvent& e : gpu->Step()) {
      ASSERT_TRUE(e.error.ok()) << e.error;
      if (e.token_id >= 0) together[e.request_id].push_back(e.token_id);
      if (e.finish_reason != FinishReason::kNone) finish[e.request_id] = e.finish_reason;
    }
  }
  ASSERT_FALSE(gpu->HasWork());
  EXPECT_EQ(gpu->num_free_blocks(), gpu->num_blocks());
  for (int i = 0; i < 4; ++i) {
    const std::string id = "r" + std::to_string(i);
    EXPECT_EQ(finish[id], FinishReason::kLength) << id;
    ASSERT_EQ(together[id].size(), 12u) << id;
    std::vector<int32_t> alone;
    RunGreedy(*gpu, PseudoRandomPrompt(5 + 9 * i, static_cast<uint32_t>(30 + i)), 12, &alone, nullptr);
    EXPECT_EQ(together[id], alone) << id;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, EngineCudaTest,
                         ::testing::Values(Case{"tiny", "bf16", 2e-2}, Case{"tiny", "fp8", 5e-2},
                                           Case{"dense-tiny", "bf16", 2e-2}, Case{"dense-tiny", "fp8", 5e-2}),
                         CaseName);

TEST(EngineCudaErrorsTest, KvCacheLargerThanTheDeviceIsResourceExhausted) {
  MOE_REQUIRE_CUDA_DEVICE();
  EngineOptions options;
  options.device = kernels::DeviceSpec{kernels::DeviceSpec::Kind::kCuda, 0};
  options.kv_cache_bytes = int64_t{64} << 40;  // 64 TiB
  auto engine = Engine::CreateEmbedded(moe::testing::TestModelDir("tiny", "bf16"), options);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kResourceExhausted) << engine.status();
  EXPECT_THAT(engine.status().message(), HasSubstr("kv_cache_bytes"));
  EXPECT_THAT(engine.status().message(), HasSubstr("free"));
  // The device is still usable afterwards.
  options.kv_cache_bytes = int64_t{64} << 20;
  auto ok = Engine::CreateEmbedded(moe::testing::TestModelDir("tiny", "bf16"), options);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_TRUE((*ok)->PromptLogits(PseudoRandomPrompt(4, 5)).ok());
}

TEST(EngineCudaErrorsTest, OrdinalPastTheDeviceCountIsFailedPrecondition) {
  MOE_REQUIRE_CUDA_DEVICE();
  auto count = kernels::cuda::DeviceCount();
  ASSERT_TRUE(count.ok()) << count.status();
  EngineOptions options;
  options.device = kernels::DeviceSpec{kernels::DeviceSpec::Kind::kCuda, *count};
  auto engine = Engine::CreateEmbedded(moe::testing::TestModelDir("dense-tiny", "bf16"), options);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kFailedPrecondition) << engine.status();
  EXPECT_THAT(engine.status().message(), HasSubstr("cuda:" + std::to_string(*count)));
}

}  // namespace
}  // namespace moe::engine
