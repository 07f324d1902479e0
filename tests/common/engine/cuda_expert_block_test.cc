// CudaExpertBlock against the CPU ExpertBlock on the tiny model (hidden 128, expert width 128), in
// BF16 and FP8: the same combine payload within docs/gpu.md's tolerances (the largest difference
// relative to the largest CPU output: 2e-2 BF16, 5e-2 FP8), the same errors for bad messages, and
// on the GPU a batch's rows identical to each row served alone. Needs a GPU: skips with the reason
// without one (label gpu; scripts/gpu_check.sh runs it).
#include "common/engine/cuda/cuda_expert_block.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/engine/expert_block.h"
#include "common/kernels/cuda/cuda_kernels.h"
#include "common/model/checkpoint.h"
#include "common/model/config.h"
#include "common/model/weights.h"
#include "common/transport/moe_message.h"
#include "gtest/gtest.h"
#include "tests/util/test_models.h"

namespace moe::engine {
namespace {

using transport::ExpertGroup;

#define MOE_REQUIRE_GPU()                                                   \
  do {                                                                      \
    const absl::Status probe = kernels::cuda::CheckDevice(0, "gpu test");   \
    if (!probe.ok()) GTEST_SKIP() << "no CUDA device: " << probe.message(); \
  } while (0)

constexpr int64_t kFirst = 8;  // the shard: experts [8, 24)
constexpr int64_t kCount = 16;
constexpr int64_t kLayer = 1;

struct Blocks {
  model::ModelConfig config;
  std::unique_ptr<model::Checkpoint> checkpoint;
  std::unique_ptr<ExpertBlock> cpu;
  std::unique_ptr<CudaExpertBlock> gpu;
};

// Both blocks over the same shard of the tiny model in `dtype` ("bf16" or "fp8").
void MakeBlocks(const std::string& dtype, Blocks* b) {
  const std::string dir = moe::testing::TestModelDir("tiny", dtype);
  auto config = model::ModelConfig::FromFile(dir + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  b->config = *config;
  ASSERT_TRUE(b->config.IsMoeLayer(kLayer));
  auto checkpoint = model::Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  b->checkpoint = *std::move(checkpoint);
  auto cpu_shard = model::LoadExpertShard(*b->checkpoint, b->config, kFirst, kCount);
  ASSERT_TRUE(cpu_shard.ok()) << cpu_shard.status();
  auto gpu_shard = model::LoadExpertShard(*b->checkpoint, b->config, kFirst, kCount);
  ASSERT_TRUE(gpu_shard.ok()) << gpu_shard.status();
  b->cpu = std::make_unique<ExpertBlock>(b->config, *std::move(cpu_shard));
  auto gpu = CudaExpertBlock::Create(b->config, **gpu_shard, 0);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  b->gpu = *std::move(gpu);
}

// A dispatch with `groups`, rows drawn uniformly from [-2, 2) (seeded).
std::vector<std::byte> Dispatch(int64_t hidden, const std::vector<ExpertGroup>& groups, uint32_t seed) {
  std::vector<std::byte> payload;
  bf16* rows = transport::EncodeMoeMessageHeader(hidden, groups, &payload);
  int64_t n = 0;
  for (const ExpertGroup& g : groups) n += g.num_rows;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  for (int64_t i = 0; i < n * hidden; ++i) rows[i] = FloatToBF16(dist(rng));
  return payload;
}

std::vector<float> Rows(const std::vector<std::byte>& combine) {
  auto view = transport::DecodeMoeMessage(combine);
  EXPECT_TRUE(view.ok()) << view.status();
  if (!view.ok()) return {};
  std::vector<float> out(static_cast<size_t>(view->total_rows * view->hidden));
  for (size_t i = 0; i < out.size(); ++i) out[i] = BF16ToFloat(view->rows[i]);
  return out;
}

// Several experts, uneven rows, an empty group and an expert with one row.
const std::vector<ExpertGroup> kRound = {{8, 3}, {10, 1}, {11, 0}, {17, 6}, {23, 2}};

void ExpectCloseToCpu(const std::string& dtype, double tolerance) {
  Blocks b;
  MakeBlocks(dtype, &b);
  if (::testing::Test::HasFatalFailure()) return;
  const std::vector<std::byte> dispatch = Dispatch(b.config.hidden_size, kRound, 1);
  auto cpu = b.cpu->Serve(kLayer, dispatch);
  auto gpu = b.gpu->Serve(kLayer, dispatch);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  ASSERT_EQ(cpu->size(), gpu->size());
  // The header (groups) is the same bytes.
  const size_t header = transport::MoeMessageSize(b.config.hidden_size, kRound.size(), 0);
  EXPECT_EQ(std::memcmp(cpu->data(), gpu->data(), header), 0);
  const std::vector<float> want = Rows(*cpu);
  const std::vector<float> got = Rows(*gpu);
  ASSERT_EQ(want.size(), got.size());
  double max_ref = 0.0, max_diff = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << "element " << i;
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(want[i])));
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(want[i]) - got[i]));
  }
  ASSERT_GT(max_ref, 0.0);
  EXPECT_LE(max_diff / max_ref, tolerance) << dtype << ": max diff " << max_diff << " of max " << max_ref;
  EXPECT_EQ(b.gpu->TokenCounts(), b.cpu->TokenCounts());
  EXPECT_EQ(b.gpu->ExpertWeightBytes(kLayer), b.cpu->ExpertWeightBytes(kLayer));
}

TEST(CudaExpertBlockTest, ServeMatchesTheCpuBlockInBf16) {
  MOE_REQUIRE_GPU();
  ExpectCloseToCpu("bf16", 2e-2);
}

TEST(CudaExpertBlockTest, ServeMatchesTheCpuBlockInFp8) {
  MOE_REQUIRE_GPU();
  ExpectCloseToCpu("fp8", 5e-2);
}

// Each row of a round served alone (its own one-row dispatch) gives the bits it got in the batch.
TEST(CudaExpertBlockTest, ABatchsRowsAreTheRowsServedAlone) {
  MOE_REQUIRE_GPU();
  for (const std::string dtype : {"bf16", "fp8"}) {
    Blocks b;
    MakeBlocks(dtype, &b);
    if (::testing::Test::HasFatalFailure()) return;
    const int64_t hidden = b.config.hidden_size;
    const std::vector<std::byte> dispatch = Dispatch(hidden, kRound, 2);
    auto batch = b.gpu->Serve(kLayer, dispatch);
    ASSERT_TRUE(batch.ok()) << batch.status();
    const auto in = transport::DecodeMoeMessage(dispatch);
    const auto out = transport::DecodeMoeMessage(*batch);
    ASSERT_TRUE(in.ok() && out.ok());
    int64_t row = 0;
    for (const ExpertGroup& g : kRound) {
      for (int32_t r = 0; r < g.num_rows; ++r, ++row) {
        std::vector<std::byte> one;
        const std::vector<ExpertGroup> group = {{g.expert, 1}};
        bf16* x = transport::EncodeMoeMessageHeader(hidden, group, &one);
        std::memcpy(x, in->rows + row * hidden, static_cast<size_t>(hidden) * sizeof(bf16));
        auto alone = b.gpu->Serve(kLayer, one);
        ASSERT_TRUE(alone.ok()) << alone.status();
        const auto alone_view = transport::DecodeMoeMessage(*alone);
        ASSERT_TRUE(alone_view.ok());
        EXPECT_EQ(std::memcmp(alone_view->rows, out->rows + row * hidden,
                              static_cast<size_t>(hidden) * sizeof(bf16)),
                  0)
            << dtype << ": row " << row << " (expert " << g.expert << ") differs served alone";
      }
    }
  }
}

// A bad message is refused with the CPU block's error, before anything reaches the device.
TEST(CudaExpertBlockTest, BadMessagesGetTheCpuBlocksErrors) {
  MOE_REQUIRE_GPU();
  Blocks b;
  MakeBlocks("bf16", &b);
  if (::testing::Test::HasFatalFailure()) return;
  const int64_t hidden = b.config.hidden_size;
  const std::vector<std::vector<std::byte>> bad = {
      {},                                     // not a message
      Dispatch(hidden, {{8, 1}, {3, 1}}, 3),  // expert 3 is not hosted
      Dispatch(hidden / 2, {{8, 1}}, 4),      // wrong hidden size
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    auto cpu = b.cpu->Serve(kLayer, bad[i]);
    auto gpu = b.gpu->Serve(kLayer, bad[i]);
    ASSERT_FALSE(cpu.ok()) << i;
    ASSERT_FALSE(gpu.ok()) << i;
    EXPECT_EQ(gpu.status(), cpu.status()) << i;
  }
  auto not_moe = b.gpu->Serve(b.config.num_hidden_layers, Dispatch(hidden, {{8, 1}}, 5));
  EXPECT_EQ(not_moe.status().code(), absl::StatusCode::kInvalidArgument) << not_moe.status();
  auto empty = b.gpu->Serve(kLayer, Dispatch(hidden, {}, 6));
  ASSERT_TRUE(empty.ok()) << empty.status();
}

}  // namespace
}  // namespace moe::engine
