#include "common/model/config.h"

#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace moe::model {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Qwen/Qwen3-30B-A3B config.json (docs/numerics.md#released-models), verbatim.
constexpr char k30B[] = R"({
  "architectures": ["Qwen3MoeForCausalLM"],
  "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "eos_token_id": 151645,
  "decoder_sparse_step": 1, "head_dim": 128, "hidden_act": "silu",
  "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 6144,
  "max_position_embeddings": 40960, "max_window_layers": 48, "mlp_only_layers": [],
  "model_type": "qwen3_moe", "moe_intermediate_size": 768, "norm_topk_prob": true,
  "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8,
  "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": false,
  "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000.0,
  "router_aux_loss_coef": 0.001, "sliding_window": null, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": true,
  "use_sliding_window": false, "vocab_size": 151936
})";

// Qwen/Qwen3-235B-A22B config.json (docs/numerics.md#released-models), verbatim.
constexpr char k235B[] =
    R"({ "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "eos_token_id": 151645, "decoder_sparse_step": 1, "head_dim": 128,
  "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 12288,
  "max_position_embeddings": 40960, "max_window_layers": 94, "mlp_only_layers": [],
  "model_type": "qwen3_moe", "moe_intermediate_size": 1536, "norm_topk_prob": true,
  "num_attention_heads": 64, "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 94,
  "num_key_value_heads": 4, "output_router_logits": false, "rms_norm_eps": 1e-06,
  "rope_scaling": null, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
  "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0", "use_cache": true, "use_sliding_window": false, "vocab_size": 151936 })";

// The 30B config with `patch` merged in (null deletes a key).
std::string Patched(const std::string& patch, const char* base = k30B) {
  nlohmann::json j = nlohmann::json::parse(base);
  j.merge_patch(nlohmann::json::parse(patch));
  return j.dump();
}

void ExpectInvalid(const std::string& json, const std::string& field) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(json);
  ASSERT_FALSE(c.ok()) << "expected an error naming " << field;
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << c.status();
  EXPECT_THAT(c.status().message(), HasSubstr("'" + field + "'")) << c.status();
}

TEST(ModelConfigTest, ParsesQwen3_30B_A3B) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(k30B);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "qwen3_moe");
  EXPECT_EQ(c->vocab_size, 151936);
  EXPECT_EQ(c->hidden_size, 2048);
  EXPECT_EQ(c->intermediate_size, 6144);
  EXPECT_EQ(c->moe_intermediate_size, 768);
  EXPECT_EQ(c->num_hidden_layers, 48);
  EXPECT_EQ(c->num_attention_heads, 32);
  EXPECT_EQ(c->num_key_value_heads, 4);
  EXPECT_EQ(c->head_dim, 128);  // not hidden/heads = 64
  EXPECT_EQ(c->num_experts, 128);
  EXPECT_EQ(c->num_experts_per_tok, 8);
  EXPECT_EQ(c->decoder_sparse_step, 1);
  EXPECT_TRUE(c->mlp_only_layers.empty());
  EXPECT_TRUE(c->norm_topk_prob);
  EXPECT_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_EQ(c->rope_theta, 1e6);
  EXPECT_EQ(c->rope_scaling.type, "default");
  EXPECT_EQ(c->max_position_embeddings, 40960);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  EXPECT_EQ(c->bos_token_id, 151643);
  EXPECT_THAT(c->eos_token_ids, ElementsAre(151645));
  EXPECT_FALSE(c->IsFp8());
  EXPECT_TRUE(c->IsMoe());
  EXPECT_TRUE(c->IsMoeLayer(0));
  EXPECT_TRUE(c->IsMoeLayer(47));
}

TEST(ModelConfigTest, Parses235BAnd2507Variants) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(k235B);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_size, 4096);
  EXPECT_EQ(c->num_attention_heads, 64);
  EXPECT_EQ(c->moe_intermediate_size, 1536);
  EXPECT_EQ(c->num_hidden_layers, 94);
  // 235B-A22B-Instruct-2507 (docs/numerics.md#released-models).
  c = ModelConfig::FromJson(Patched(R"({"max_position_embeddings": 262144, "rope_theta": 5000000})", k235B));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_theta, 5e6);
  EXPECT_EQ(c->max_position_embeddings, 262144);
}

TEST(ModelConfigTest, ParsesTransformersV5Serialization) {
  // 30B-A3B-Thinking-2507 as re-saved by transformers v5: dtype, rope_parameters,
  // num_local_experts.
  const std::string v5 = Patched(R"({"torch_dtype": null, "dtype": "bfloat16", "rope_theta": null,
      "rope_scaling": null, "rope_parameters": {"rope_theta": 10000000, "rope_type": "default"},
      "num_experts": null, "num_local_experts": 128, "max_position_embeddings": 262144})");
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(v5);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_theta, 1e7);
  EXPECT_EQ(c->rope_scaling.type, "default");
  EXPECT_EQ(c->num_experts, 128);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
}

TEST(ModelConfigTest, ParsesYarnInBothForms) {
  absl::StatusOr<ModelConfig> v4 = ModelConfig::FromJson(Patched(
      R"({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}})"));
  ASSERT_TRUE(v4.ok()) << v4.status();
  EXPECT_EQ(v4->rope_scaling.type, "yarn");
  EXPECT_EQ(v4->rope_scaling.factor, 4.0);
  EXPECT_EQ(v4->rope_scaling.original_max_position_embeddings, 32768);
  EXPECT_EQ(v4->rope_scaling.beta_fast, 32.0);
  EXPECT_EQ(v4->rope_scaling.beta_slow, 1.0);
  EXPECT_FALSE(v4->rope_scaling.attention_factor.has_value());

  absl::StatusOr<ModelConfig> old_key = ModelConfig::FromJson(
      Patched(R"({"rope_scaling": {"type": "yarn", "factor": 2.0, "attention_factor": 1.5}})"));
  ASSERT_TRUE(old_key.ok()) << old_key.status();
  EXPECT_EQ(old_key->rope_scaling.type, "yarn");
  EXPECT_EQ(old_key->rope_scaling.original_max_position_embeddings, 40960);  // falls back
  EXPECT_EQ(old_key->rope_scaling.attention_factor, 1.5);

  absl::StatusOr<ModelConfig> v5 = ModelConfig::FromJson(Patched(
      R"({"rope_theta": null, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0,
          "original_max_position_embeddings": 32768, "beta_fast": 16}})"));
  ASSERT_TRUE(v5.ok()) << v5.status();
  EXPECT_EQ(v5->rope_theta, 1e6);
  EXPECT_EQ(v5->rope_scaling.type, "yarn");
  EXPECT_EQ(v5->rope_scaling.beta_fast, 16.0);
}

TEST(ModelConfigTest, ParsesFp8QuantizationConfig) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(Patched(R"({"quantization_config": {
      "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128],
      "modules_to_not_convert": ["lm_head", "model.layers.0.mlp.gate"]}})"));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(c->IsFp8());
  EXPECT_EQ(c->quantization->quant_method, "fp8");
  EXPECT_EQ(c->quantization->block_rows, 128);
  EXPECT_EQ(c->quantization->block_cols, 128);
  EXPECT_THAT(c->quantization->modules_to_not_convert, ElementsAre("lm_head", "model.layers.0.mlp.gate"));
}

TEST(ModelConfigTest, RejectsOtherFp8BlockSizesAndMethods) {
  ExpectInvalid(Patched(R"({"quantization_config": {"quant_method": "fp8", "weight_block_size": [64, 64]}})"),
                "quantization_config.weight_block_size");
  ExpectInvalid(Patched(R"({"quantization_config": {"quant_method": "fp8"}})"),
                "quantization_config.weight_block_size");
  ExpectInvalid(
      Patched(R"({"quantization_config": {"quant_method": "gptq", "weight_block_size": [128, 128]}})"),
      "quantization_config.quant_method");
  ExpectInvalid(Patched(R"({"quantization_config": {"quant_method": "fp8", "activation_scheme": "static",
                            "weight_block_size": [128, 128]}})"),
                "quantization_config.activation_scheme");
}

TEST(ModelConfigTest, EosMayBeAList) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(Patched(R"({"eos_token_id": [151645, 151643]})"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT(c->eos_token_ids, ElementsAre(151645, 151643));
  ExpectInvalid(Patched(R"({"eos_token_id": "151645"})"), "eos_token_id");
}

TEST(ModelConfigTest, HeadDimDefaultsToHiddenOverHeads) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(Patched(R"({"head_dim": null})"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 64);
}

TEST(ModelConfigTest, ParsesDenseQwen3) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(R"({"model_type": "qwen3", "vocab_size": 151936,
      "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
      "num_key_value_heads": 8, "head_dim": 128, "rope_theta": 1000000, "tie_word_embeddings": true,
      "max_position_embeddings": 40960, "hidden_act": "silu", "torch_dtype": "bfloat16"})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->IsMoe());
  EXPECT_EQ(c->num_experts, 0);
  EXPECT_EQ(c->intermediate_size, 9728);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_FALSE(c->IsMoeLayer(0));
  EXPECT_FALSE(c->IsMoeLayer(35));
}

TEST(ModelConfigTest, SparseStepAndMlpOnlyLayersSelectDenseLayers) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(
      Patched(R"({"decoder_sparse_step": 2, "mlp_only_layers": [3], "num_hidden_layers": 6})"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->IsMoeLayer(0));  // (0+1) % 2 != 0
  EXPECT_TRUE(c->IsMoeLayer(1));
  EXPECT_FALSE(c->IsMoeLayer(3));  // mlp_only
  EXPECT_TRUE(c->IsMoeLayer(5));
}

TEST(ModelConfigTest, RejectsUnsupportedArchitectureFields) {
  ExpectInvalid(Patched(R"({"model_type": "qwen2_moe"})"), "model_type");
  ExpectInvalid(Patched(R"({"model_type": null})"), "model_type");
  ExpectInvalid(Patched(R"({"hidden_act": "gelu"})"), "hidden_act");
  ExpectInvalid(Patched(R"({"attention_bias": true})"), "attention_bias");
  ExpectInvalid(Patched(R"({"use_sliding_window": true})"), "use_sliding_window");
  ExpectInvalid(Patched(R"({"rope_scaling": {"rope_type": "linear", "factor": 2.0}})"),
                "rope_scaling.rope_type");
  ExpectInvalid(Patched(R"({"rope_scaling": {"rope_type": "yarn"}})"), "rope_scaling.factor");
}

TEST(ModelConfigTest, RejectsBadSizes) {
  ExpectInvalid(Patched(R"({"hidden_size": 0})"), "hidden_size");
  ExpectInvalid(Patched(R"({"vocab_size": -5})"), "vocab_size");
  ExpectInvalid(Patched(R"({"num_hidden_layers": 0})"), "num_hidden_layers");
  ExpectInvalid(Patched(R"({"moe_intermediate_size": 0})"), "moe_intermediate_size");
  ExpectInvalid(Patched(R"({"head_dim": -128})"), "head_dim");
  ExpectInvalid(Patched(R"({"num_key_value_heads": 5})"), "num_key_value_heads");
  ExpectInvalid(Patched(R"({"num_experts_per_tok": 129})"), "num_experts_per_tok");
  ExpectInvalid(Patched(R"({"num_experts": 0})"), "num_experts");
  ExpectInvalid(Patched(R"({"mlp_only_layers": [48]})"), "mlp_only_layers");
  ExpectInvalid(Patched(R"({"rms_norm_eps": 0})"), "rms_norm_eps");
}

TEST(ModelConfigTest, RejectsMissingRequiredFields) {
  ExpectInvalid(Patched(R"({"vocab_size": null})"), "vocab_size");
  ExpectInvalid(Patched(R"({"num_key_value_heads": null})"), "num_key_value_heads");
  ExpectInvalid(Patched(R"({"num_experts": null})"), "num_experts");
  ExpectInvalid(Patched(R"({"num_experts_per_tok": null})"), "num_experts_per_tok");
  ExpectInvalid(R"({"model_type": "qwen3", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
                   "num_attention_heads": 2, "num_key_value_heads": 1})",
                "intermediate_size");
}

TEST(ModelConfigTest, RejectsWrongJsonTypes) {
  ExpectInvalid(Patched(R"({"hidden_size": "2048"})"), "hidden_size");
  ExpectInvalid(Patched(R"({"hidden_size": 2048.5})"), "hidden_size");
  ExpectInvalid(Patched(R"({"norm_topk_prob": 1})"), "norm_topk_prob");
  ExpectInvalid(Patched(R"({"rope_theta": "1e6"})"), "rope_theta");
  ExpectInvalid(Patched(R"({"mlp_only_layers": "none"})"), "mlp_only_layers");
  ExpectInvalid(Patched(R"({"rope_scaling": 4})"), "rope_scaling");
  ExpectInvalid(Patched(R"({"quantization_config": []})"), "quantization_config");
}

TEST(ModelConfigTest, RejectsMalformedJson) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson("{\"model_type\": ");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(ModelConfig::FromJson("[1, 2]").ok());
}

TEST(ModelConfigTest, FromFileNamesThePath) {
  const std::string path = (std::filesystem::temp_directory_path() / "moe_config_test_missing.json").string();
  absl::StatusOr<ModelConfig> c = ModelConfig::FromFile(path);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr(path));
}

TEST(GenerationConfigTest, ParsesHybridQwen3File) {
  absl::StatusOr<GenerationConfig> g =
      GenerationConfig::FromJson(R"({"bos_token_id": 151643, "do_sample": true,
      "eos_token_id": [151645, 151643], "pad_token_id": 151643, "temperature": 0.6, "top_k": 20, "top_p": 0.95})");
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_TRUE(g->do_sample);
  EXPECT_EQ(g->temperature, 0.6);
  EXPECT_EQ(g->top_k, 20);
  EXPECT_EQ(g->top_p, 0.95);
  EXPECT_FALSE(g->min_p.has_value());
  EXPECT_EQ(g->repetition_penalty, 1.0);
  EXPECT_THAT(g->eos_token_ids, ElementsAre(151645, 151643));
  EXPECT_EQ(g->pad_token_id, 151643);
  EXPECT_EQ(g->bos_token_id, 151643);
}

TEST(GenerationConfigTest, AbsentKeysTakeTransformersDefaults) {
  absl::StatusOr<GenerationConfig> g =
      GenerationConfig::FromJson(R"({"do_sample": true, "eos_token_id": 151645})");
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->temperature, 1.0);
  EXPECT_EQ(g->top_k, 50);
  EXPECT_EQ(g->top_p, 1.0);
  EXPECT_THAT(g->eos_token_ids, ElementsAre(151645));
  EXPECT_FALSE(g->pad_token_id.has_value());
}

TEST(GenerationConfigTest, RejectsBadValues) {
  EXPECT_THAT(GenerationConfig::FromJson(R"({"temperature": "hot"})").status().message(),
              HasSubstr("'temperature'"));
  EXPECT_THAT(GenerationConfig::FromJson(R"({"top_p": 1.5})").status().message(), HasSubstr("'top_p'"));
  EXPECT_THAT(GenerationConfig::FromJson(R"({"top_k": -1})").status().message(), HasSubstr("'top_k'"));
}

TEST(GenerationConfigTest, MissingFileYieldsDefaultsWithModelEos) {
  ModelConfig model;
  model.eos_token_ids = {151645};
  model.bos_token_id = 151643;
  absl::StatusOr<GenerationConfig> g = GenerationConfig::FromModelDir(
      (std::filesystem::temp_directory_path() / "moe_no_such_dir").string(), model);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_FALSE(g->do_sample);
  EXPECT_EQ(g->top_k, 50);
  EXPECT_THAT(g->eos_token_ids, ElementsAre(151645));
  EXPECT_EQ(g->bos_token_id, 151643);
}

}  // namespace
}  // namespace moe::model
