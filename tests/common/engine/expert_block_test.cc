#include "common/engine/expert_block.h"

#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/model/checkpoint.h"
#include "common/model/config.h"
#include "common/model/safetensors.h"
#include "common/model/weights.h"
#include "common/transport/moe_message.h"
#include "gtest/gtest.h"
#include "tests/common/model/test_util.h"

namespace moe::engine {
namespace {

using transport::ExpertGroup;

// The small test model (hidden 8, 2 MoE layers, 4 experts); the block hosts experts [1, 3).
class ExpertBlockTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    // fp8: 128x128 weight blocks, the router left in bf16.
    absl::StatusOr<model::ModelConfig> config =
        model::ModelConfig::FromJson(model::testing::SmallMoeConfigJson(
            GetParam() ? R"({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128],
            "modules_to_not_convert": ["lm_head", "model.layers.0.mlp.gate", "model.layers.1.mlp.gate"]}})"
                       : "{}"));
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    ASSERT_TRUE(model::WriteSafetensors(dir_.File("model.safetensors"),
                                        model::testing::ModelTensors(config_, /*fp8=*/GetParam()))
                    .ok());
    absl::StatusOr<std::unique_ptr<model::Checkpoint>> checkpoint = model::Checkpoint::Open(dir_.path());
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    checkpoint_ = *std::move(checkpoint);
  }

  std::unique_ptr<ExpertBlock> Block() const {
    auto shard = model::LoadExpertShard(*checkpoint_, config_, /*first_expert=*/1, /*num_experts=*/2);
    EXPECT_TRUE(shard.ok()) << shard.status();
    if (!shard.ok()) return nullptr;
    model::PrefaultWeights(**shard, model::WarmUpOptions{.memory = model::WeightsMemory::kMapped});
    return std::make_unique<ExpertBlock>(config_, *std::move(shard));
  }

  // Rows routed to both hosted experts, row r filled with (r + 1) / 8 - column / 32.
  std::vector<std::byte> Dispatch() const {
    const std::vector<ExpertGroup> groups = {{.expert = 1, .num_rows = 3}, {.expert = 2, .num_rows = 2}};
    std::vector<std::byte> payload;
    bf16* rows = transport::EncodeMoeMessageHeader(config_.hidden_size, groups, &payload);
    for (int64_t r = 0; r < 5; ++r) {
      for (int64_t c = 0; c < config_.hidden_size; ++c) {
        rows[r * config_.hidden_size + c] =
            FloatToBF16(static_cast<float>(r + 1) / 8.0f - static_cast<float>(c) / 32.0f);
      }
    }
    return payload;
  }

  model::testing::TempDir dir_;
  model::ModelConfig config_;
  std::unique_ptr<model::Checkpoint> checkpoint_;
};

// Rounds served on two threads while the home shard moves into huge pages answer exactly what they
// answered before; once the switch is done the rounds read the copy, with the same answers.
TEST_P(ExpertBlockTest, RoundsAcrossTheSwitchIntoHugePagesAnswerTheSame) {
  std::unique_ptr<ExpertBlock> block = Block();
  ASSERT_NE(block, nullptr);
  const std::vector<std::byte> dispatch = Dispatch();
  std::vector<std::vector<std::byte>> expected;
  for (int64_t layer = 0; layer < config_.num_hidden_layers; ++layer) {
    absl::StatusOr<std::vector<std::byte>> combine = block->Serve(layer, dispatch);
    ASSERT_TRUE(combine.ok()) << combine.status();
    expected.push_back(*std::move(combine));
  }
  EXPECT_FALSE(block->home_in_huge_pages());

  std::atomic<bool> done{false};
  std::atomic<int> mismatches{0}, rounds{0};
  std::vector<std::thread> servers;
  for (int t = 0; t < 2; ++t) {
    servers.emplace_back([&] {
      // At least a few rounds each, and on until the switch is done.
      for (int i = 0; i < 8 || !done.load(); ++i) {
        const int64_t layer = i % config_.num_hidden_layers;
        absl::StatusOr<std::vector<std::byte>> combine = block->Serve(layer, dispatch);
        if (!combine.ok() || *combine != expected[static_cast<size_t>(layer)]) mismatches.fetch_add(1);
        rounds.fetch_add(1);
      }
    });
  }
  block->SwitchToHugePagesInBackground();
  block->WaitForHugePages();
  done.store(true);
  for (std::thread& t : servers) t.join();
  EXPECT_EQ(mismatches.load(), 0) << "of " << rounds.load() << " rounds";
  EXPECT_TRUE(block->home_in_huge_pages());
  for (int64_t layer = 0; layer < config_.num_hidden_layers; ++layer) {
    absl::StatusOr<std::vector<std::byte>> combine = block->Serve(layer, dispatch);
    ASSERT_TRUE(combine.ok()) << combine.status();
    EXPECT_EQ(*combine, expected[static_cast<size_t>(layer)]) << "layer " << layer;
  }
  EXPECT_EQ(block->first_expert(), 1);
  EXPECT_EQ(block->num_experts(), 2);
  // A second request is a no-op, and extra experts still go beside the copied home shard.
  block->SwitchToHugePagesInBackground();
  EXPECT_TRUE(block->home_in_huge_pages());
  auto extra = model::LoadExpertShard(*checkpoint_, config_, /*first_expert=*/3, /*num_experts=*/1);
  ASSERT_TRUE(extra.ok()) << extra.status();
  std::vector<std::unique_ptr<model::ExpertShardWeights>> extras;
  extras.push_back(*std::move(extra));
  ASSERT_TRUE(block->SetExtraExperts(std::move(extras)).ok());
  EXPECT_EQ(block->ExtraExperts(), std::vector<int64_t>{3});
  EXPECT_TRUE(block->home_in_huge_pages());
}

// A block destroyed while its copy may still run stops the copy and joins it.
TEST_P(ExpertBlockTest, DestroyedDuringTheSwitchStopsCleanly) {
  for (int i = 0; i < 10; ++i) {
    std::unique_ptr<ExpertBlock> block = Block();
    ASSERT_NE(block, nullptr);
    block->SwitchToHugePagesInBackground();
    if (i % 2 == 1) {
      absl::StatusOr<std::vector<std::byte>> combine = block->Serve(0, Dispatch());
      EXPECT_TRUE(combine.ok()) << combine.status();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Bf16AndFp8, ExpertBlockTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Fp8" : "Bf16";
                         });

}  // namespace
}  // namespace moe::engine
