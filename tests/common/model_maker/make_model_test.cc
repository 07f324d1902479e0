#include "common/model_maker/make_model.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>

#include "common/model/checkpoint.h"
#include "common/model/config.h"
#include "common/model/weights.h"
#include "common/model_maker/weight_init.h"
#include "common/tensor/bf16.h"
#include "common/tensor/fp8.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/model/test_util.h"

namespace moe::model_maker {
namespace {

using model::Checkpoint;
using model::DenseWeights;
using model::ExpertShardWeights;
using model::GenerationConfig;
using model::ModelConfig;
using model::testing::ReadFileBytes;
using model::testing::TempDir;
using ::testing::HasSubstr;

MakeModelOptions Options(const std::string& dir, const std::string& preset = "tiny") {
  MakeModelOptions o;
  o.preset = preset;
  o.out_dir = dir;
  return o;
}

TEST(WeightInitTest, GeneratorIsVersionStable) {
  // Golden values, computed independently from make_model.h's description with Python/numpy.
  // Changing the generator changes every made model, so it must be deliberate.
  EXPECT_EQ(Fnv1a64("lm_head.weight"), 0xab67eb515e1b6f0dull);
  const uint64_t key = TensorKey(0, "lm_head.weight");
  EXPECT_EQ(key, 0xbeac43d91e93baf5ull);
  EXPECT_EQ(InitNormal(key, 0), 0x1.5714d4p-1f);
  EXPECT_EQ(InitNormal(key, 1), 0x1.c578f8p-3f);
}

TEST(WeightInitTest, SamplesHaveUnitVariance) {
  const uint64_t key = TensorKey(7, "x");
  double sum = 0, sum_sq = 0, max_abs = 0;
  const int n = 1 << 20;
  for (int i = 0; i < n; ++i) {
    const double z = InitNormal(key, i);
    sum += z;
    sum_sq += z * z;
    max_abs = std::max(max_abs, std::fabs(z));
  }
  EXPECT_NEAR(sum / n, 0.0, 0.005);
  EXPECT_NEAR(sum_sq / n, 1.0, 0.005);
  EXPECT_LT(max_abs, 2 * std::sqrt(3.0));
  EXPECT_GT(max_abs, 3.0);
}

TEST(MakeModelTest, SameSeedGivesIdenticalFilesOnAnyThreadCount) {
  TempDir a, b;
  MakeModelOptions oa = Options(a.path()), ob = Options(b.path());
  oa.seed = ob.seed = 42;
  oa.threads = 1;
  ob.threads = 3;
  ASSERT_TRUE(MakeModel(oa).ok());
  ASSERT_TRUE(MakeModel(ob).ok());
  for (const char* f : {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                        "tokenizer_config.json"}) {
    EXPECT_EQ(ReadFileBytes(a.File(f)), ReadFileBytes(b.File(f))) << f;
  }
}

TEST(MakeModelTest, DifferentSeedGivesDifferentWeights) {
  TempDir a, b;
  MakeModelOptions oa = Options(a.path()), ob = Options(b.path());
  ob.seed = 1;
  ASSERT_TRUE(MakeModel(oa).ok());
  ASSERT_TRUE(MakeModel(ob).ok());
  const std::string wa = ReadFileBytes(a.File("model.safetensors")),
                    wb = ReadFileBytes(b.File("model.safetensors"));
  EXPECT_EQ(wa.size(), wb.size());
  EXPECT_NE(wa, wb);
}

TEST(MakeModelTest, TinyLoadsBackThroughWeights) {
  TempDir dir;
  ASSERT_TRUE(MakeModel(Options(dir.path())).ok());
  absl::StatusOr<ModelConfig> config = ModelConfig::FromFile(dir.File("config.json"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->vocab_size, 151936);
  EXPECT_EQ(config->hidden_size, 128);
  EXPECT_EQ(config->num_hidden_layers, 4);
  EXPECT_EQ(config->num_experts, 128);
  EXPECT_EQ(config->num_experts_per_tok, 8);
  EXPECT_EQ(config->head_dim, 128);
  EXPECT_EQ(config->max_position_embeddings, 4096);
  absl::StatusOr<GenerationConfig> gen = GenerationConfig::FromModelDir(dir.path(), *config);
  ASSERT_TRUE(gen.ok()) << gen.status();
  EXPECT_EQ(gen->top_k, 20);
  EXPECT_EQ(gen->eos_token_ids, (std::vector<int64_t>{151645, 151643}));
  absl::StatusOr<std::unique_ptr<Checkpoint>> ck = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ck.ok()) << ck.status();
  // embed + 4 x (8 attention/norm + router + 384 experts) + norm + lm_head.
  EXPECT_EQ((*ck)->TensorNames().size(), 1u + 4 * (8 + 1 + 384) + 2);
  absl::StatusOr<std::unique_ptr<DenseWeights>> dense = LoadDenseWeights(**ck, *config);
  ASSERT_TRUE(dense.ok()) << dense.status();
  absl::StatusOr<std::unique_ptr<ExpertShardWeights>> experts = LoadExpertShard(**ck, *config, 0, 128);
  ASSERT_TRUE(experts.ok()) << experts.status();
  // The norm weights are 1 + 0.1 z with |z| < 2 sqrt(3).
  for (int i = 0; i < 128; ++i) EXPECT_NEAR(BF16ToFloat((*dense)->final_norm[i]), 1.0, 0.35);
  // Element (v, 5) of lm_head is the generator's noise sample scaled by 1 / sqrt(128), plus the
  // planted successor: 8 / sqrt(128) times element 5 of the embedding of v's predecessor.
  for (int64_t v : {int64_t{0}, int64_t{7919}, int64_t{151642}, int64_t{151700}}) {
    float expected = 1.0f / std::sqrt(128.0f) * InitNormal(TensorKey(0, "lm_head.weight"), v * 128 + 5);
    if (v < 151643) {
      EXPECT_EQ(PlantedSuccessor(PlantedPredecessor(v)), v);
      expected += kPlantedSuccessorGain / std::sqrt(128.0f) *
                  InitNormal(TensorKey(0, "model.embed_tokens.weight"), PlantedPredecessor(v) * 128 + 5);
    }
    EXPECT_EQ(BF16ToFloat(static_cast<const bf16*>((*dense)->lm_head.data)[v * 128 + 5]), RoundBF16(expected))
        << v;
  }
  EXPECT_EQ(PlantedSuccessor(0), 7919);
  EXPECT_GT(std::filesystem::file_size(dir.File("tokenizer.json")), 10'000'000u);
}

// Skewed routing for the expert load balancer: the hot experts' router rows are the plain model's
// times the gain (4 is a power of two, so exactly), every other row and tensor is unchanged.
TEST(MakeModelTest, HotExpertsScaleOnlyTheirRouterRows) {
  TempDir plain_dir, hot_dir;
  MakeModelOptions hot = Options(hot_dir.path());
  hot.hot_experts = 2;
  hot.hot_expert_gain = 4.0f;
  ASSERT_TRUE(MakeModel(Options(plain_dir.path())).ok());
  ASSERT_TRUE(MakeModel(hot).ok());
  auto plain_ck = Checkpoint::Open(plain_dir.path());
  auto hot_ck = Checkpoint::Open(hot_dir.path());
  ASSERT_TRUE(plain_ck.ok() && hot_ck.ok());
  for (const std::string layer : {"0", "3"}) {
    const std::string name = "model.layers." + layer + ".mlp.gate.weight";
    auto a = (*plain_ck)->Get(name);
    auto b = (*hot_ck)->Get(name);
    ASSERT_TRUE(a.ok() && b.ok());
    const auto* pa = static_cast<const bf16*>(a->data);
    const auto* pb = static_cast<const bf16*>(b->data);
    for (int64_t i = 0; i < 128 * 128; ++i) {
      const float want = BF16ToFloat(pa[i]) * (i < 2 * 128 ? 4.0f : 1.0f);
      ASSERT_EQ(BF16ToFloat(pb[i]), want) << name << " element " << i;
    }
  }
  auto a = (*plain_ck)->Get("model.layers.0.mlp.experts.0.up_proj.weight");
  auto b = (*hot_ck)->Get("model.layers.0.mlp.experts.0.up_proj.weight");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(std::memcmp(a->data, b->data, a->NumBytes()), 0);

  TempDir bad_dir;
  MakeModelOptions bad = Options(bad_dir.path());
  bad.hot_experts = 129;
  EXPECT_THAT(MakeModel(bad).message(), HasSubstr("--hot-experts must be in [0, 128]"));
  bad.hot_experts = 4;
  bad.hot_expert_gain = 0.0f;
  EXPECT_THAT(MakeModel(bad).message(), HasSubstr("--hot-expert-gain"));
}

TEST(MakeModelTest, Fp8IsTheBlockQuantisationOfTheBf16Model) {
  TempDir bf, f8;
  MakeModelOptions ob = Options(bf.path()), of = Options(f8.path());
  of.dtype = "fp8";
  ASSERT_TRUE(MakeModel(ob).ok());
  ASSERT_TRUE(MakeModel(of).ok());
  absl::StatusOr<ModelConfig> config = ModelConfig::FromFile(f8.File("config.json"));
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(config->IsFp8());
  EXPECT_EQ(config->quantization->modules_to_not_convert.size(), 1u + 3 * 4);
  EXPECT_EQ(config->quantization->modules_to_not_convert[0], "lm_head");
  auto ck8 = Checkpoint::Open(f8.path());
  auto ck16 = Checkpoint::Open(bf.path());
  ASSERT_TRUE(ck8.ok() && ck16.ok());
  auto dense8 = LoadDenseWeights(**ck8, *config);
  ASSERT_TRUE(dense8.ok()) << dense8.status();
  auto experts8 = LoadExpertShard(**ck8, *config, 64, 64);
  ASSERT_TRUE(experts8.ok()) << experts8.status();
  absl::StatusOr<ModelConfig> config16 = ModelConfig::FromFile(bf.File("config.json"));
  auto experts16 = LoadExpertShard(**ck16, *config16, 64, 64);
  ASSERT_TRUE(experts16.ok());
  const LinearWeight& w8 = (*experts8)->layers[2][5].down_proj;
  const LinearWeight& w16 = (*experts16)->layers[2][5].down_proj;
  ASSERT_EQ(w8.dtype, DType::kF8E4M3);
  ASSERT_EQ(w8.ScaleRows(), 1);
  const auto* q = static_cast<const uint8_t*>(w8.data);
  const auto* ref = static_cast<const bf16*>(w16.data);
  float amax = 0;
  for (int i = 0; i < 128 * 128; ++i) amax = std::max(amax, std::fabs(BF16ToFloat(ref[i])));
  EXPECT_FLOAT_EQ(w8.scale_inv[0], amax / 448.0f);
  for (int i = 0; i < 128 * 128; ++i) {
    const float x = BF16ToFloat(ref[i]);
    // e4m3 has 3 mantissa bits: relative error <= 2^-4, plus the subnormal step near zero.
    EXPECT_NEAR(Fp8E4M3ToFloat(q[i]) * w8.scale_inv[0], x, std::fabs(x) / 16 + w8.scale_inv[0] / 512) << i;
  }
  // Norms, router, embeddings and lm_head stay BF16.
  EXPECT_EQ((*ck8)->Get("model.layers.0.mlp.gate.weight")->dtype, DType::kBF16);
  EXPECT_EQ((*ck8)->Get("lm_head.weight")->dtype, DType::kBF16);
  EXPECT_EQ((*ck8)->Get("model.layers.0.self_attn.q_proj.weight_scale_inv")->dtype, DType::kF32);
}

TEST(MakeModelTest, ShardsOptionWritesIndexedShards) {
  TempDir dir;
  MakeModelOptions o = Options(dir.path());
  o.shards = 3;
  ASSERT_TRUE(MakeModel(o).ok());
  for (const char* f : {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                        "model-00003-of-00003.safetensors", "model.safetensors.index.json"}) {
    EXPECT_TRUE(std::filesystem::exists(dir.File(f))) << f;
  }
  EXPECT_FALSE(std::filesystem::exists(dir.File("model.safetensors")));
  auto index = nlohmann::json::parse(ReadFileBytes(dir.File("model.safetensors.index.json")));
  EXPECT_EQ(index["weight_map"]["lm_head.weight"], "model-00003-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["model.embed_tokens.weight"], "model-00001-of-00003.safetensors");
  absl::StatusOr<ModelConfig> config = ModelConfig::FromFile(dir.File("config.json"));
  auto ck = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ((*ck)->TensorNames().size(), 1u + 4 * (8 + 1 + 384) + 2);
  EXPECT_TRUE(LoadDenseWeights(**ck, *config).ok());
  EXPECT_TRUE(LoadExpertShard(**ck, *config, 0, 128).ok());
}

TEST(MakeModelTest, DenseTinyLoadsBackTied) {
  TempDir dir;
  ASSERT_TRUE(MakeModel(Options(dir.path(), "dense-tiny")).ok());
  absl::StatusOr<ModelConfig> config = ModelConfig::FromFile(dir.File("config.json"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model_type, "qwen3");
  auto ck = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ck.ok());
  EXPECT_FALSE((*ck)->Contains("lm_head.weight"));
  auto dense = LoadDenseWeights(**ck, *config);
  ASSERT_TRUE(dense.ok()) << dense.status();
  EXPECT_EQ((*dense)->layers[1].dense_mlp.up_proj.out_features, 256);
  EXPECT_EQ((*dense)->lm_head.data, static_cast<const void*>((*dense)->embed_tokens));
}

TEST(MakeModelTest, RefusesNonEmptyDirUnlessForced) {
  TempDir dir;
  MakeModelOptions o = Options(dir.path(), "dense-tiny");
  o.shards = 2;
  ASSERT_TRUE(MakeModel(o).ok());
  o.shards = 0;
  absl::Status again = MakeModel(o);
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(again.message(), HasSubstr("--force"));
  o.force = true;
  ASSERT_TRUE(MakeModel(o).ok());
  // The stale shards and index are gone, so the single file is what loads.
  EXPECT_FALSE(std::filesystem::exists(dir.File("model.safetensors.index.json")));
  EXPECT_FALSE(std::filesystem::exists(dir.File("model-00001-of-00002.safetensors")));
  EXPECT_TRUE(Checkpoint::Open(dir.path()).ok());
}

TEST(MakeModelTest, RejectsUnknownPresetAndDtype) {
  TempDir dir;
  absl::Status s = MakeModel(Options(dir.path(), "huge"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("unknown preset 'huge'"));
  MakeModelOptions o = Options(dir.path());
  o.dtype = "int4";
  s = MakeModel(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("unknown dtype 'int4'"));
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

TEST(MakeModelTest, BenchPresetsHaveTheRealShapes) {
  absl::StatusOr<std::string> j30 = PresetConfigJson("bench-30b-4l");
  ASSERT_TRUE(j30.ok());
  absl::StatusOr<ModelConfig> c30 = ModelConfig::FromJson(*j30);
  ASSERT_TRUE(c30.ok()) << c30.status();
  EXPECT_EQ(c30->num_hidden_layers, 4);
  EXPECT_EQ(c30->hidden_size, 2048);
  EXPECT_EQ(c30->moe_intermediate_size, 768);
  EXPECT_EQ(c30->head_dim, 128);
  absl::StatusOr<ModelConfig> c235 = ModelConfig::FromJson(*PresetConfigJson("bench-235b-2l"));
  ASSERT_TRUE(c235.ok()) << c235.status();
  EXPECT_EQ(c235->num_hidden_layers, 2);
  EXPECT_EQ(c235->hidden_size, 4096);
  EXPECT_EQ(c235->num_attention_heads, 64);
  EXPECT_EQ(c235->moe_intermediate_size, 1536);
}

}  // namespace
}  // namespace moe::model_maker
