// config.json and generation_config.json of Qwen3-MoE (model_type "qwen3_moe") and dense Qwen3
// ("qwen3") checkpoints, in both the transformers v4 and v5 serializations
// (docs/numerics.md#model-config).
#ifndef MOE_COMMON_MODEL_CONFIG_H_
#define MOE_COMMON_MODEL_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace moe::model {

// rope_scaling / rope_parameters. type "default" means plain RoPE; "yarn" is static YaRN.
struct RopeScaling {
  std::string type = "default";
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  std::optional<double> attention_factor;  // YaRN mscale override
  std::optional<double> mscale;
  std::optional<double> mscale_all_dim;
  bool truncate = true;
};

// quantization_config for the fine-grained FP8 checkpoints (quant_method "fp8").
struct QuantizationConfig {
  std::string quant_method;  // "fp8"
  std::string activation_scheme = "dynamic";
  int64_t block_rows = 128;  // weight_block_size[0]
  int64_t block_cols = 128;  // weight_block_size[1]
  std::vector<std::string> modules_to_not_convert;
};

struct ModelConfig {
  std::string model_type;  // "qwen3_moe" or "qwen3"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;      // dense MLP width (dense models, mlp_only_layers)
  int64_t moe_intermediate_size = 0;  // per-expert width
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;     // from config.json, else hidden_size / num_attention_heads
  int64_t num_experts = 0;  // 0 for dense models (v5 alias num_local_experts)
  int64_t num_experts_per_tok = 0;
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;
  bool norm_topk_prob = false;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;  // v4 rope_theta or v5 rope_parameters.rope_theta
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 32768;
  bool tie_word_embeddings = false;
  bool attention_bias = false;           // must be false: rejected otherwise
  std::string torch_dtype = "bfloat16";  // v4 torch_dtype or v5 dtype
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
  std::optional<QuantizationConfig> quantization;

  // True iff layer `layer` uses the sparse MoE block (docs/numerics.md#model-config).
  bool IsMoeLayer(int64_t layer) const;
  bool IsMoe() const { return num_experts > 0; }
  bool IsFp8() const { return quantization.has_value(); }

  // Parses and validates (positive sizes, heads divisible by kv heads, top-k <= experts, supported
  // model_type/hidden_act/quantization, no sliding window or attention bias). Errors are
  // INVALID_ARGUMENT naming the field.
  static absl::StatusOr<ModelConfig> FromJson(std::string_view json);
  static absl::StatusOr<ModelConfig> FromFile(const std::string& path);
};

// generation_config.json: the defaults for unset sampling parameters (docs/numerics.md#generation-config).
// Keys absent from the file take transformers' GenerationConfig defaults.
struct GenerationConfig {
  bool do_sample = false;
  double temperature = 1.0;
  int64_t top_k = 50;
  double top_p = 1.0;
  std::optional<double> min_p;
  double repetition_penalty = 1.0;
  std::vector<int64_t> eos_token_ids;  // int or list in the file
  std::optional<int64_t> pad_token_id;
  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> max_new_tokens;

  static absl::StatusOr<GenerationConfig> FromJson(std::string_view json);
  // A missing file yields the defaults with eos from `model` (not an error).
  static absl::StatusOr<GenerationConfig> FromModelDir(const std::string& dir, const ModelConfig& model);
};

}  // namespace moe::model

#endif  // MOE_COMMON_MODEL_CONFIG_H_
