#include "common/model/weights.h"

#include <atomic>
#include <cctype>
#include <cstring>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/model/test_util.h"

namespace moe::model {
namespace {

using ::testing::HasSubstr;
using testing::PatternTensor;
using testing::TempDir;

ModelConfig Config(const std::string& extra = "{}") {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(testing::SmallMoeConfigJson(extra));
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

std::unique_ptr<Checkpoint> Write(const TempDir& dir, const std::vector<TensorToWrite>& tensors) {
  EXPECT_TRUE(WriteSafetensors(dir.File("model.safetensors"), tensors).ok());
  absl::StatusOr<std::unique_ptr<Checkpoint>> c = Checkpoint::Open(dir.path());
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

// Pattern value of element i (see test_util.h).
float Pattern(int64_t i, float base = 0.0f) {
  return static_cast<float>(i % 7) * 0.25f + base;
}

TEST(WeightsTest, LoadsDenseWeightsAsViews) {
  TempDir dir;
  const ModelConfig config = Config();
  auto ck = Write(dir, testing::ModelTensors(config));
  absl::StatusOr<std::unique_ptr<DenseWeights>> w = LoadDenseWeights(*ck, config);
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_EQ((*w)->layers.size(), 2u);
  const AttentionLayerWeights& l0 = (*w)->layers[0];
  EXPECT_EQ(l0.q_proj.dtype, DType::kBF16);
  EXPECT_EQ(l0.q_proj.out_features, 8);  // 2 heads * head_dim 4
  EXPECT_EQ(l0.k_proj.out_features, 4);
  EXPECT_EQ(l0.o_proj.in_features, 8);
  EXPECT_NE(l0.router, nullptr);
  EXPECT_EQ(l0.dense_mlp.gate_proj.dtype, DType::kUnknown);
  EXPECT_EQ(BF16ToFloat(l0.input_layernorm[3]), Pattern(3, 1.0f));
  EXPECT_EQ(BF16ToFloat((*w)->embed_tokens[9]), Pattern(9));
  EXPECT_EQ(BF16ToFloat(static_cast<const bf16*>((*w)->lm_head.data)[9]), Pattern(9, 0.5f));
  // Aligned BF16 tensors are not copied.
  EXPECT_EQ(static_cast<const void*>((*w)->embed_tokens), ck->Get("model.embed_tokens.weight")->data);
  EXPECT_TRUE((*w)->owned.empty());
}

TEST(WeightsTest, TiedEmbeddingsAliasLmHead) {
  TempDir dir;
  const ModelConfig config = Config(R"({"tie_word_embeddings": true})");
  auto ck = Write(dir, testing::ModelTensors(config));
  absl::StatusOr<std::unique_ptr<DenseWeights>> w = LoadDenseWeights(*ck, config);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->lm_head.data, static_cast<const void*>((*w)->embed_tokens));
  EXPECT_EQ((*w)->lm_head.out_features, 16);
}

TEST(WeightsTest, MissingTensorIsNotFoundByName) {
  TempDir dir;
  const ModelConfig config = Config();
  auto tensors = testing::ModelTensors(config);
  testing::DropTensor(&tensors, "model.layers.1.self_attn.k_norm.weight");
  auto ck = Write(dir, tensors);
  absl::StatusOr<std::unique_ptr<DenseWeights>> w = LoadDenseWeights(*ck, config);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(), HasSubstr("model.layers.1.self_attn.k_norm.weight"));
}

TEST(WeightsTest, WrongShapeNamesTensorAndShapes) {
  TempDir dir;
  const ModelConfig config = Config();
  auto tensors = testing::ModelTensors(config);
  testing::ReshapeTensor(&tensors, "model.layers.0.self_attn.q_proj.weight", {8, 4});
  auto ck = Write(dir, tensors);
  absl::StatusOr<std::unique_ptr<DenseWeights>> w = LoadDenseWeights(*ck, config);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.status().message(),
            "tensor 'model.layers.0.self_attn.q_proj.weight' has shape [8, 4], expected [8, 8]");
}

TEST(WeightsTest, WrongDtypeIsRejected) {
  TempDir dir;
  const ModelConfig config = Config();
  auto tensors = testing::ModelTensors(config);
  testing::DropTensor(&tensors, "model.norm.weight");
  tensors.push_back(PatternTensor("model.norm.weight", DType::kI32, {8}));
  auto ck = Write(dir, tensors);
  absl::StatusOr<std::unique_ptr<DenseWeights>> w = LoadDenseWeights(*ck, config);
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(w.status().message(), HasSubstr("tensor 'model.norm.weight' has dtype I32, expected BF16"));
}

TEST(WeightsTest, ConvertsF32AndF16DenseTensorsToBf16) {
  TempDir dir;
  const ModelConfig config = Config();
  auto tensors = testing::ModelTensors(config);
  testing::DropTensor(&tensors, "model.norm.weight");
  testing::DropTensor(&tensors, "model.layers.0.self_attn.o_proj.weight");
  tensors.push_back(PatternTensor("model.norm.weight", DType::kF32, {8}, 1.0f));
  tensors.push_back(PatternTensor("model.layers.0.self_attn.o_proj.weight", DType::kF16, {8, 8}));
  auto ck = Write(dir, tensors);
  absl::StatusOr<std::unique_ptr<DenseWeights>> w = LoadDenseWeights(*ck, config);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->owned.size(), 2u);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(BF16ToFloat((*w)->final_norm[i]), Pattern(i, 1.0f));
  const auto* o = static_cast<const bf16*>((*w)->layers[0].o_proj.data);
  EXPECT_EQ((*w)->layers[0].o_proj.dtype, DType::kBF16);
  EXPECT_EQ(BF16ToFloat(o[13]), Pattern(13));
}

// Rss (bytes) of this process's mappings of `path`: the pages of it in our page tables.
int64_t MappedRssOf(const std::string& path) {
  std::ifstream smaps("/proc/self/smaps");
  int64_t rss = 0;
  bool in_file = false;
  for (std::string line; std::getline(smaps, line);) {
    if (!line.empty() && std::isxdigit(static_cast<unsigned char>(line[0])) &&
        line.find('-') != std::string::npos && line.find(' ') < line.find(':')) {
      in_file = line.size() >= path.size() && line.compare(line.size() - path.size(), path.size(), path) == 0;
    } else if (in_file && line.rfind("Rss:", 0) == 0) {
      rss += std::stoll(line.substr(4)) * 1024;
    }
  }
  return rss;
}

TEST(WeightsTest, AConvertedTensorIsResidentOnceNotAlsoAsItsSource) {
  TempDir dir;
  const ModelConfig config = Config(R"({"vocab_size": 65536})");
  auto tensors = testing::ModelTensors(config);
  testing::DropTensor(&tensors, "model.embed_tokens.weight");
  // 2 MiB as F32, converted to a 1 MiB bf16 copy at load.
  tensors.push_back(PatternTensor("model.embed_tokens.weight", DType::kF32, {65536, config.hidden_size}));
  auto ck = Write(dir, tensors);
  absl::StatusOr<std::unique_ptr<DenseWeights>> w = LoadDenseWeights(*ck, config);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(BF16ToFloat((*w)->embed_tokens[65536 * config.hidden_size - 1]),
            Pattern(65536 * config.hidden_size - 1));
  // The F32 source's pages left our page tables once converted (the kernel's fault-around may have
  // mapped a few pages of it back while neighbouring tensors were read).
  EXPECT_LT(MappedRssOf(dir.File("model.safetensors")), 512 * 1024);
}

ModelConfig Fp8Config();  // below, with the other FP8 tests

// Every linear weight's bytes, in a fixed order, for comparing views before and after a move.
std::vector<uint8_t> LinearBytes(const std::vector<const LinearWeight*>& weights) {
  std::vector<uint8_t> bytes;
  for (const LinearWeight* w : weights) {
    const auto* d = static_cast<const uint8_t*>(w->data);
    bytes.insert(bytes.end(), d,
                 d + w->out_features * w->in_features * static_cast<int64_t>(DTypeSize(w->dtype)));
    if (w->scale_inv != nullptr) {
      const auto* s = reinterpret_cast<const uint8_t*>(w->scale_inv);
      bytes.insert(bytes.end(), s, s + w->ScaleRows() * w->ScaleCols() * 4);
    }
  }
  return bytes;
}

std::vector<const LinearWeight*> DenseLinears(const DenseWeights& w) {
  std::vector<const LinearWeight*> out{&w.lm_head};
  for (const AttentionLayerWeights& l : w.layers) {
    for (const LinearWeight* x : {&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj}) out.push_back(x);
  }
  return out;
}

std::vector<const LinearWeight*> ExpertLinears(const ExpertShardWeights& w) {
  std::vector<const LinearWeight*> out;
  for (const std::vector<MlpWeights>& layer : w.layers) {
    for (const MlpWeights& m : layer) {
      for (const LinearWeight* x : {&m.gate_proj, &m.up_proj, &m.down_proj}) out.push_back(x);
    }
  }
  return out;
}

// With huge pages, PrefaultWeights moves every linear weight (FP8 codes and their scales, owned
// conversions included) into its arena, keeps the bytes, and leaves the other views alone.
TEST(WeightsTest, HugePagePrefaultMovesEveryLinearWeightAndKeepsItsBytes) {
  for (const DType scales : {DType::kF32, DType::kBF16}) {
    TempDir dir;
    const ModelConfig config = Fp8Config();
    auto ck = Write(dir, testing::ModelTensors(config, /*fp8=*/true, scales));
    absl::StatusOr<std::unique_ptr<DenseWeights>> dense = LoadDenseWeights(*ck, config);
    absl::StatusOr<std::unique_ptr<ExpertShardWeights>> shard = LoadExpertShard(*ck, config, 1, 2);
    ASSERT_TRUE(dense.ok() && shard.ok());
    const std::vector<uint8_t> dense_bytes = LinearBytes(DenseLinears(**dense));
    const std::vector<uint8_t> expert_bytes = LinearBytes(ExpertLinears(**shard));
    const void* q_before = (*dense)->layers[0].q_proj.data;
    const bf16* norm_before = (*dense)->final_norm;
    const WarmUpOptions options{.num_threads = 2, .memory = WeightsMemory::kHugePages};
    const WarmUpResult d = PrefaultWeights(**dense, options);
    const WarmUpResult e = PrefaultWeights(**shard, options);
    ASSERT_NE(d.copy, nullptr);
    ASSERT_NE(e.copy, nullptr);
    EXPECT_EQ((*dense)->resident, d.copy);
    EXPECT_EQ((*shard)->resident, e.copy);
    EXPECT_NE((*dense)->layers[0].q_proj.data, q_before);
    EXPECT_EQ((*dense)->layers[0].q_proj.data, d.copy->Relocate(q_before));
    EXPECT_EQ((*dense)->final_norm, norm_before) << "norms are not linear weights: they stay";
    EXPECT_EQ(LinearBytes(DenseLinears(**dense)), dense_bytes);
    EXPECT_EQ(LinearBytes(ExpertLinears(**shard)), expert_bytes);
    for (const LinearWeight* w : ExpertLinears(**shard)) {
      EXPECT_EQ(e.copy->Relocate(w->data), w->data) << "already in the arena";
      EXPECT_EQ(e.copy->Relocate(w->scale_inv), w->scale_inv);
    }
  }
}

// The background switch: the weights are served from the mapping meanwhile, then the dense views
// are repointed in place and the expert views come as a new snapshot; the bytes do not change and
// the source the old snapshot owns stays alive with the new one.
TEST(WeightsTest, HugePageSwitchRepointsTheViewsOnceTheCopyIsMade) {
  TempDir dir;
  const ModelConfig config = Fp8Config();
  auto ck = Write(dir, testing::ModelTensors(config, /*fp8=*/true, DType::kBF16));
  absl::StatusOr<std::unique_ptr<DenseWeights>> dense = LoadDenseWeights(*ck, config);
  absl::StatusOr<std::unique_ptr<ExpertShardWeights>> loaded = LoadExpertShard(*ck, config, 1, 2);
  ASSERT_TRUE(dense.ok() && loaded.ok());
  PrefaultWeights(**dense, WarmUpOptions{.memory = WeightsMemory::kMapped});
  PrefaultWeights(**loaded, WarmUpOptions{.memory = WeightsMemory::kMapped});
  const std::vector<uint8_t> dense_bytes = LinearBytes(DenseLinears(**dense));
  const std::vector<uint8_t> expert_bytes = LinearBytes(ExpertLinears(**loaded));
  const void* q_before = (*dense)->layers[0].q_proj.data;
  const bf16* norm_before = (*dense)->final_norm;

  std::unique_ptr<HugePageSwitch> dense_switch = HugePageSwitch::Start(**dense);
  dense_switch->Wait();
  ASSERT_TRUE(dense_switch->ready());
  EXPECT_EQ((*dense)->layers[0].q_proj.data, q_before) << "nothing moves until Apply";
  dense_switch->Apply(**dense);
  ASSERT_NE((*dense)->resident, nullptr);
  EXPECT_EQ((*dense)->layers[0].q_proj.data, (*dense)->resident->Relocate(q_before));
  EXPECT_NE((*dense)->layers[0].q_proj.data, q_before);
  EXPECT_EQ((*dense)->final_norm, norm_before);
  EXPECT_EQ(LinearBytes(DenseLinears(**dense)), dense_bytes);
  dense_switch.reset();
  EXPECT_EQ(LinearBytes(DenseLinears(**dense)), dense_bytes) << "the copy outlives the switch";

  std::shared_ptr<const ExpertShardWeights> shard = *std::move(loaded);
  std::atomic<int> called{0};
  std::unique_ptr<HugePageSwitch> expert_switch =
      HugePageSwitch::Start(*shard, [&called](HugePageSwitch&) { called.fetch_add(1); });
  expert_switch->Wait();
  ASSERT_TRUE(expert_switch->ready());
  EXPECT_EQ(called.load(), 1);
  std::shared_ptr<const ExpertShardWeights> relocated = expert_switch->Relocated(shard);
  expert_switch->ReleaseSource();
  ASSERT_NE(relocated->resident, nullptr);
  EXPECT_EQ(relocated->first_expert, 1);
  EXPECT_EQ(relocated->num_experts, 2);
  const std::vector<const LinearWeight*> old_views = ExpertLinears(*shard);
  const std::vector<const LinearWeight*> new_views = ExpertLinears(*relocated);
  ASSERT_EQ(old_views.size(), new_views.size());
  for (size_t i = 0; i < new_views.size(); ++i) {
    EXPECT_EQ(new_views[i]->data, relocated->resident->Relocate(old_views[i]->data));
    EXPECT_NE(new_views[i]->data, old_views[i]->data);
    EXPECT_EQ(new_views[i]->scale_inv, relocated->resident->Relocate(old_views[i]->scale_inv));
  }
  EXPECT_EQ(LinearBytes(new_views), expert_bytes);
  EXPECT_EQ(LinearBytes(old_views), expert_bytes) << "released pages fault back in from the page cache";
  std::weak_ptr<const ExpertShardWeights> source = shard;
  shard.reset();
  EXPECT_FALSE(source.expired()) << "the relocated snapshot keeps its source alive";
  relocated.reset();
  EXPECT_TRUE(source.expired());
}

TEST(WeightsTest, MappedPrefaultLeavesTheViewsWhereTheyAre) {
  TempDir dir;
  const ModelConfig config = Config();
  auto ck = Write(dir, testing::ModelTensors(config));
  absl::StatusOr<std::unique_ptr<DenseWeights>> w = LoadDenseWeights(*ck, config);
  ASSERT_TRUE(w.ok()) << w.status();
  const void* q = (*w)->layers[1].q_proj.data;
  const WarmUpResult r = PrefaultWeights(**w, WarmUpOptions{.memory = WeightsMemory::kMapped});
  EXPECT_EQ(r.copy, nullptr);
  EXPECT_EQ((*w)->resident, nullptr);
  EXPECT_EQ((*w)->layers[1].q_proj.data, q);
}

TEST(WeightsTest, DenseQwen3LayersHaveMlp) {
  TempDir dir;
  absl::StatusOr<ModelConfig> config = ModelConfig::FromJson(
      testing::SmallMoeConfigJson(R"({"model_type": "qwen3", "num_experts": null, "num_experts_per_tok": null,
                                      "moe_intermediate_size": null})"));
  ASSERT_TRUE(config.ok()) << config.status();
  auto ck = Write(dir, testing::ModelTensors(*config));
  absl::StatusOr<std::unique_ptr<DenseWeights>> w = LoadDenseWeights(*ck, *config);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->layers[1].router, nullptr);
  EXPECT_EQ((*w)->layers[1].dense_mlp.gate_proj.out_features, 12);
  EXPECT_EQ((*w)->layers[1].dense_mlp.down_proj.in_features, 12);
  EXPECT_EQ(LoadExpertShard(*ck, *config, 0, 1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(WeightsTest, LoadsExpertShardPerExpertNames) {
  TempDir dir;
  const ModelConfig config = Config();
  auto ck = Write(dir, testing::ModelTensors(config));
  absl::StatusOr<std::unique_ptr<ExpertShardWeights>> s = LoadExpertShard(*ck, config, 1, 2);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ((*s)->first_expert, 1);
  ASSERT_EQ((*s)->layers.size(), 2u);
  ASSERT_EQ((*s)->layers[1].size(), 2u);
  EXPECT_EQ((*s)->layers[1][1].down_proj.data,
            ck->Get("model.layers.1.mlp.experts.2.down_proj.weight")->data);
  EXPECT_EQ((*s)->layers[0][0].gate_proj.out_features, 4);
  EXPECT_EQ((*s)->layers[0][0].gate_proj.in_features, 8);
  EXPECT_EQ(LoadExpertShard(*ck, config, 3, 2).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadExpertShard(*ck, config, -1, 1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(WeightsTest, LoadsFusedV5Experts) {
  TempDir dir;
  const ModelConfig config = Config();
  std::vector<TensorToWrite> tensors;
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".mlp.experts.";
    tensors.push_back(PatternTensor(p + "gate_up_proj", DType::kBF16, {4, 8, 8}));
    tensors.push_back(PatternTensor(p + "down_proj", DType::kBF16, {4, 8, 4}));
  }
  auto ck = Write(dir, tensors);
  absl::StatusOr<std::unique_ptr<ExpertShardWeights>> s = LoadExpertShard(*ck, config, 2, 2);
  ASSERT_TRUE(s.ok()) << s.status();
  const auto* base = static_cast<const bf16*>(ck->Get("model.layers.0.mlp.experts.gate_up_proj")->data);
  // Expert 3: gate rows [0, 4) and up rows [4, 8) of gate_up_proj[3].
  EXPECT_EQ((*s)->layers[0][1].gate_proj.data, base + 3 * 64);
  EXPECT_EQ((*s)->layers[0][1].up_proj.data, base + 3 * 64 + 32);
  const auto* down = static_cast<const bf16*>(ck->Get("model.layers.0.mlp.experts.down_proj")->data);
  EXPECT_EQ((*s)->layers[0][0].down_proj.data, down + 2 * 32);
  EXPECT_EQ((*s)->layers[0][0].down_proj.out_features, 8);
}

ModelConfig Fp8Config() {
  return Config(R"({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128],
      "modules_to_not_convert": ["lm_head", "model.layers.0.mlp.gate", "model.layers.1.mlp.gate"]}})");
}

TEST(WeightsTest, LoadsFp8WithF32Scales) {
  TempDir dir;
  const ModelConfig config = Fp8Config();
  auto ck = Write(dir, testing::ModelTensors(config, /*fp8=*/true, DType::kF32));
  absl::StatusOr<std::unique_ptr<DenseWeights>> w = LoadDenseWeights(*ck, config);
  ASSERT_TRUE(w.ok()) << w.status();
  const LinearWeight& q = (*w)->layers[0].q_proj;
  EXPECT_EQ(q.dtype, DType::kF8E4M3);
  EXPECT_EQ(q.ScaleRows(), 1);
  EXPECT_EQ(q.scale_inv[0], 0.5f);
  EXPECT_EQ(static_cast<const void*>(q.scale_inv),
            ck->Get("model.layers.0.self_attn.q_proj.weight_scale_inv")->data);
  absl::StatusOr<std::unique_ptr<ExpertShardWeights>> s = LoadExpertShard(*ck, config, 0, 4);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ((*s)->layers[1][3].up_proj.dtype, DType::kF8E4M3);
  EXPECT_EQ((*s)->layers[1][3].up_proj.scale_inv[0], 0.5f);
}

TEST(WeightsTest, ConvertsBf16ScalesToOwnedF32) {
  TempDir dir;
  const ModelConfig config = Fp8Config();
  auto ck = Write(dir, testing::ModelTensors(config, /*fp8=*/true, DType::kBF16));
  absl::StatusOr<std::unique_ptr<ExpertShardWeights>> s = LoadExpertShard(*ck, config, 2, 1);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ((*s)->owned.size(), 6u);  // 2 layers x gate/up/down
  EXPECT_EQ((*s)->layers[0][0].down_proj.scale_inv[0], 0.5f);
}

TEST(WeightsTest, Fp8ScaleShapeAndPresenceAreChecked) {
  TempDir dir;
  const ModelConfig config = Fp8Config();
  auto tensors = testing::ModelTensors(config, true);
  testing::ReshapeTensor(&tensors, "model.layers.0.self_attn.k_proj.weight_scale_inv", {2, 1});
  testing::DropTensor(&tensors, "model.layers.0.mlp.experts.1.gate_proj.weight_scale_inv");
  auto ck = Write(dir, tensors);
  absl::StatusOr<std::unique_ptr<DenseWeights>> w = LoadDenseWeights(*ck, config);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().message(),
            "tensor 'model.layers.0.self_attn.k_proj.weight_scale_inv' has shape [2, 1], expected [1, 1]");
  absl::StatusOr<std::unique_ptr<ExpertShardWeights>> s = LoadExpertShard(*ck, config, 0, 2);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.status().message(), HasSubstr("model.layers.0.mlp.experts.1.gate_proj.weight_scale_inv"));
}

TEST(WeightsTest, Fp8WeightsNeedAQuantizationConfig) {
  TempDir dir;
  const ModelConfig config = Config();
  auto ck = Write(dir, testing::ModelTensors(config, /*fp8=*/true));
  absl::StatusOr<std::unique_ptr<DenseWeights>> w = LoadDenseWeights(*ck, config);
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(w.status().message(), HasSubstr("has no fp8 quantization_config"));
}

TEST(WeightsTest, RouterMustStayBf16) {
  TempDir dir;
  const ModelConfig config = Fp8Config();
  auto tensors = testing::ModelTensors(config, true);
  testing::DropTensor(&tensors, "model.layers.1.mlp.gate.weight");
  tensors.push_back(PatternTensor("model.layers.1.mlp.gate.weight", DType::kF8E4M3, {4, 8}));
  auto ck = Write(dir, tensors);
  absl::StatusOr<std::unique_ptr<DenseWeights>> w = LoadDenseWeights(*ck, config);
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(w.status().message(), HasSubstr("tensor 'model.layers.1.mlp.gate.weight' has dtype F8_E4M3"));
}

}  // namespace
}  // namespace moe::model
