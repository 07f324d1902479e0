#include "common/model/config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "common/status/status_macros.h"
#include "nlohmann/json.hpp"

namespace moe::model {
namespace {

using nlohmann::json;

absl::Status FieldError(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("config field '", field, "': ", what));
}

std::string TypeName(const json& v) {
  return v.type_name();
}

// Reads `obj[key]` when present and not null. Every getter rejects a wrong JSON type by name.
const json* Find(const json& obj, absl::string_view key) {
  auto it = obj.find(std::string(key));
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<std::optional<int64_t>> OptInt(const json& obj, absl::string_view key) {
  const json* v = Find(obj, key);
  if (v == nullptr) return std::optional<int64_t>();
  if (!v->is_number_integer()) {
    return FieldError(key, absl::StrCat("must be an integer, got ", TypeName(*v), " ", v->dump()));
  }
  return std::optional<int64_t>(v->get<int64_t>());
}

absl::StatusOr<int64_t> RequiredInt(const json& obj, absl::string_view key) {
  ASSIGN_OR_RETURN(std::optional<int64_t> v, OptInt(obj, key));
  if (!v.has_value()) return FieldError(key, "is required");
  return *v;
}

absl::StatusOr<int64_t> PositiveInt(const json& obj, absl::string_view key) {
  ASSIGN_OR_RETURN(int64_t v, RequiredInt(obj, key));
  if (v <= 0) return FieldError(key, absl::StrCat("must be positive, got ", v));
  return v;
}

absl::StatusOr<std::optional<double>> OptNumber(const json& obj, absl::string_view key) {
  const json* v = Find(obj, key);
  if (v == nullptr) return std::optional<double>();
  if (!v->is_number()) {
    return FieldError(key, absl::StrCat("must be a number, got ", TypeName(*v), " ", v->dump()));
  }
  const double d = v->get<double>();
  if (!std::isfinite(d)) return FieldError(key, "must be finite");
  return std::optional<double>(d);
}

absl::StatusOr<std::optional<bool>> OptBool(const json& obj, absl::string_view key) {
  const json* v = Find(obj, key);
  if (v == nullptr) return std::optional<bool>();
  if (!v->is_boolean()) {
    return FieldError(key, absl::StrCat("must be a boolean, got ", TypeName(*v), " ", v->dump()));
  }
  return std::optional<bool>(v->get<bool>());
}

absl::StatusOr<std::optional<std::string>> OptString(const json& obj, absl::string_view key) {
  const json* v = Find(obj, key);
  if (v == nullptr) return std::optional<std::string>();
  if (!v->is_string()) {
    return FieldError(key, absl::StrCat("must be a string, got ", TypeName(*v), " ", v->dump()));
  }
  return std::optional<std::string>(v->get<std::string>());
}

// An int or a list of ints (eos_token_id); absent or null gives an empty list.
absl::StatusOr<std::vector<int64_t>> IntOrIntList(const json& obj, absl::string_view key) {
  const json* v = Find(obj, key);
  std::vector<int64_t> out;
  if (v == nullptr) return out;
  if (v->is_number_integer()) {
    out.push_back(v->get<int64_t>());
  } else if (v->is_array()) {
    for (const json& e : *v) {
      if (!e.is_number_integer()) {
        return FieldError(key, absl::StrCat("list entries must be integers, got ", e.dump()));
      }
      out.push_back(e.get<int64_t>());
    }
  } else {
    return FieldError(
        key, absl::StrCat("must be an integer or a list of integers, got ", TypeName(*v), " ", v->dump()));
  }
  for (int64_t id : out) {
    if (id < 0) return FieldError(key, absl::StrCat("token ids must be >= 0, got ", id));
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> OptStringList(const json& obj, absl::string_view key) {
  const json* v = Find(obj, key);
  std::vector<std::string> out;
  if (v == nullptr) return out;
  if (!v->is_array()) return FieldError(key, absl::StrCat("must be a list, got ", TypeName(*v)));
  for (const json& e : *v) {
    if (!e.is_string()) return FieldError(key, absl::StrCat("entries must be strings, got ", e.dump()));
    out.push_back(e.get<std::string>());
  }
  return out;
}

absl::StatusOr<json> ParseObject(std::string_view text, absl::string_view what) {
  json j = json::parse(text.begin(), text.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(what, " is not valid JSON"));
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(what, " must be a JSON object"));
  return j;
}

// rope_scaling (v4) or rope_parameters (v5) minus rope_theta. `field` names it in errors.
absl::StatusOr<RopeScaling> ParseRopeScaling(const json& r, absl::string_view field,
                                             int64_t max_position_embeddings) {
  if (!r.is_object()) return FieldError(field, absl::StrCat("must be an object, got ", TypeName(r)));
  RopeScaling out;
  ASSIGN_OR_RETURN(std::optional<std::string> rope_type, OptString(r, "rope_type"));
  if (!rope_type.has_value()) {
    ASSIGN_OR_RETURN(rope_type, OptString(r, "type"));  // pre-4.45 spelling
  }
  out.type = rope_type.value_or("default");
  if (out.type == "default") return out;
  if (out.type != "yarn") {
    return FieldError(absl::StrCat(field, ".rope_type"),
                      absl::StrCat("unsupported RoPE type '", out.type, "' (only default and yarn)"));
  }
  ASSIGN_OR_RETURN(std::optional<double> factor, OptNumber(r, "factor"));
  if (!factor.has_value()) return FieldError(absl::StrCat(field, ".factor"), "is required for yarn");
  if (*factor < 1.0) return FieldError(absl::StrCat(field, ".factor"), "must be >= 1");
  out.factor = *factor;
  ASSIGN_OR_RETURN(std::optional<int64_t> original, OptInt(r, "original_max_position_embeddings"));
  // transformers falls back to max_position_embeddings when the original length is absent.
  out.original_max_position_embeddings = original.value_or(max_position_embeddings);
  if (out.original_max_position_embeddings <= 0) {
    return FieldError(absl::StrCat(field, ".original_max_position_embeddings"), "must be positive");
  }
  ASSIGN_OR_RETURN(std::optional<double> beta_fast, OptNumber(r, "beta_fast"));
  ASSIGN_OR_RETURN(std::optional<double> beta_slow, OptNumber(r, "beta_slow"));
  out.beta_fast = beta_fast.value_or(out.beta_fast);
  out.beta_slow = beta_slow.value_or(out.beta_slow);
  ASSIGN_OR_RETURN(out.attention_factor, OptNumber(r, "attention_factor"));
  ASSIGN_OR_RETURN(out.mscale, OptNumber(r, "mscale"));
  ASSIGN_OR_RETURN(out.mscale_all_dim, OptNumber(r, "mscale_all_dim"));
  ASSIGN_OR_RETURN(std::optional<bool> truncate, OptBool(r, "truncate"));
  out.truncate = truncate.value_or(true);
  return out;
}

absl::StatusOr<QuantizationConfig> ParseQuantization(const json& q) {
  if (!q.is_object()) {
    return FieldError("quantization_config", absl::StrCat("must be an object, got ", TypeName(q)));
  }
  QuantizationConfig out;
  ASSIGN_OR_RETURN(std::optional<std::string> method, OptString(q, "quant_method"));
  if (!method.has_value()) return FieldError("quantization_config.quant_method", "is required");
  if (*method != "fp8") {
    return FieldError("quantization_config.quant_method",
                      absl::StrCat("unsupported '", *method, "' (only fp8)"));
  }
  out.quant_method = *method;
  ASSIGN_OR_RETURN(std::optional<std::string> scheme, OptString(q, "activation_scheme"));
  out.activation_scheme = scheme.value_or("dynamic");
  if (out.activation_scheme != "dynamic") {
    return FieldError("quantization_config.activation_scheme",
                      absl::StrCat("unsupported '", out.activation_scheme, "' (only dynamic)"));
  }
  ASSIGN_OR_RETURN(std::optional<std::string> fmt, OptString(q, "fmt"));
  if (fmt.has_value() && *fmt != "e4m3") {
    return FieldError("quantization_config.fmt", absl::StrCat("unsupported '", *fmt, "' (only e4m3)"));
  }
  const json* block = Find(q, "weight_block_size");
  if (block == nullptr) return FieldError("quantization_config.weight_block_size", "is required");
  if (!block->is_array() || block->size() != 2 || !(*block)[0].is_number_integer() ||
      !(*block)[1].is_number_integer() || (*block)[0].get<int64_t>() != 128 ||
      (*block)[1].get<int64_t>() != 128) {
    return FieldError("quantization_config.weight_block_size",
                      absl::StrCat("must be [128, 128], got ", block->dump()));
  }
  ASSIGN_OR_RETURN(out.modules_to_not_convert, OptStringList(q, "modules_to_not_convert"));
  if (out.modules_to_not_convert.empty()) {
    // transformers v5 alias.
    ASSIGN_OR_RETURN(out.modules_to_not_convert, OptStringList(q, "ignored_layers"));
  }
  return out;
}

absl::Status ValidateConfig(const ModelConfig& c) {
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return FieldError(
        "num_key_value_heads",
        absl::StrCat(c.num_key_value_heads, " does not divide num_attention_heads ", c.num_attention_heads));
  }
  if (c.IsMoe()) {
    if (c.num_experts_per_tok > c.num_experts) {
      return FieldError("num_experts_per_tok",
                        absl::StrCat(c.num_experts_per_tok, " exceeds num_experts ", c.num_experts));
    }
  }
  for (int64_t layer : c.mlp_only_layers) {
    if (layer < 0 || layer >= c.num_hidden_layers) {
      return FieldError("mlp_only_layers",
                        absl::StrCat("layer ", layer, " is outside [0, ", c.num_hidden_layers, ")"));
    }
  }
  bool any_dense_layer = false;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) any_dense_layer |= !c.IsMoeLayer(l);
  if (any_dense_layer && c.intermediate_size <= 0) {
    return FieldError("intermediate_size", "must be positive when any layer uses the dense MLP");
  }
  return absl::OkStatus();
}

}  // namespace

bool ModelConfig::IsMoeLayer(int64_t layer) const {
  if (num_experts <= 0) return false;
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end()) {
    return false;
  }
  return (layer + 1) % decoder_sparse_step == 0;
}

absl::StatusOr<ModelConfig> ModelConfig::FromJson(std::string_view text) {
  ASSIGN_OR_RETURN(json j, ParseObject(text, "config.json"));
  ModelConfig c;
  ASSIGN_OR_RETURN(std::optional<std::string> model_type, OptString(j, "model_type"));
  if (!model_type.has_value()) return FieldError("model_type", "is required");
  if (*model_type != "qwen3_moe" && *model_type != "qwen3") {
    return FieldError("model_type",
                      absl::StrCat("unsupported '", *model_type, "' (only qwen3_moe and qwen3)"));
  }
  c.model_type = *model_type;
  const bool moe = c.model_type == "qwen3_moe";

  ASSIGN_OR_RETURN(std::optional<std::string> act, OptString(j, "hidden_act"));
  if (act.has_value() && *act != "silu") {
    return FieldError("hidden_act", absl::StrCat("unsupported '", *act, "' (only silu)"));
  }
  ASSIGN_OR_RETURN(std::optional<bool> attention_bias, OptBool(j, "attention_bias"));
  if (attention_bias.value_or(false)) return FieldError("attention_bias", "true is not supported");
  ASSIGN_OR_RETURN(std::optional<bool> sliding, OptBool(j, "use_sliding_window"));
  if (sliding.value_or(false)) return FieldError("use_sliding_window", "true is not supported");

  ASSIGN_OR_RETURN(c.vocab_size, PositiveInt(j, "vocab_size"));
  ASSIGN_OR_RETURN(c.hidden_size, PositiveInt(j, "hidden_size"));
  ASSIGN_OR_RETURN(c.num_hidden_layers, PositiveInt(j, "num_hidden_layers"));
  ASSIGN_OR_RETURN(c.num_attention_heads, PositiveInt(j, "num_attention_heads"));
  ASSIGN_OR_RETURN(c.num_key_value_heads, PositiveInt(j, "num_key_value_heads"));
  ASSIGN_OR_RETURN(std::optional<int64_t> head_dim, OptInt(j, "head_dim"));
  if (head_dim.has_value()) {
    if (*head_dim <= 0) return FieldError("head_dim", absl::StrCat("must be positive, got ", *head_dim));
    c.head_dim = *head_dim;
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      return FieldError("head_dim", "is absent and hidden_size is not a multiple of num_attention_heads");
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (moe) {
    ASSIGN_OR_RETURN(c.moe_intermediate_size, PositiveInt(j, "moe_intermediate_size"));
    ASSIGN_OR_RETURN(std::optional<int64_t> experts, OptInt(j, "num_experts"));
    if (!experts.has_value()) {
      ASSIGN_OR_RETURN(experts, OptInt(j, "num_local_experts"));
    }
    if (!experts.has_value()) return FieldError("num_experts", "is required (or num_local_experts)");
    if (*experts <= 0) return FieldError("num_experts", absl::StrCat("must be positive, got ", *experts));
    c.num_experts = *experts;
    ASSIGN_OR_RETURN(c.num_experts_per_tok, PositiveInt(j, "num_experts_per_tok"));
    ASSIGN_OR_RETURN(std::optional<int64_t> step, OptInt(j, "decoder_sparse_step"));
    c.decoder_sparse_step = step.value_or(1);
    if (c.decoder_sparse_step <= 0) {
      return FieldError("decoder_sparse_step", absl::StrCat("must be positive, got ", c.decoder_sparse_step));
    }
    const json* mlp_only = Find(j, "mlp_only_layers");
    if (mlp_only != nullptr) {
      if (!mlp_only->is_array()) return FieldError("mlp_only_layers", "must be a list of integers");
      for (const json& e : *mlp_only) {
        if (!e.is_number_integer()) return FieldError("mlp_only_layers", "must be a list of integers");
        c.mlp_only_layers.push_back(e.get<int64_t>());
      }
    }
    ASSIGN_OR_RETURN(std::optional<bool> norm_topk, OptBool(j, "norm_topk_prob"));
    c.norm_topk_prob = norm_topk.value_or(false);
    ASSIGN_OR_RETURN(std::optional<int64_t> inter, OptInt(j, "intermediate_size"));
    c.intermediate_size = inter.value_or(0);
    if (c.intermediate_size < 0) return FieldError("intermediate_size", "must not be negative");
  } else {
    ASSIGN_OR_RETURN(c.intermediate_size, PositiveInt(j, "intermediate_size"));
  }

  ASSIGN_OR_RETURN(std::optional<double> eps, OptNumber(j, "rms_norm_eps"));
  c.rms_norm_eps = eps.value_or(1e-6);
  if (c.rms_norm_eps <= 0) return FieldError("rms_norm_eps", "must be positive");
  ASSIGN_OR_RETURN(std::optional<int64_t> max_pos, OptInt(j, "max_position_embeddings"));
  c.max_position_embeddings = max_pos.value_or(32768);
  if (c.max_position_embeddings <= 0) return FieldError("max_position_embeddings", "must be positive");

  // RoPE: v4 rope_theta + rope_scaling, or v5 rope_parameters holding both.
  ASSIGN_OR_RETURN(std::optional<double> theta, OptNumber(j, "rope_theta"));
  if (const json* params = Find(j, "rope_parameters"); params != nullptr) {
    ASSIGN_OR_RETURN(c.rope_scaling, ParseRopeScaling(*params, "rope_parameters", c.max_position_embeddings));
    ASSIGN_OR_RETURN(std::optional<double> v5_theta, OptNumber(*params, "rope_theta"));
    if (v5_theta.has_value()) theta = v5_theta;
  } else if (const json* scaling = Find(j, "rope_scaling"); scaling != nullptr) {
    ASSIGN_OR_RETURN(c.rope_scaling, ParseRopeScaling(*scaling, "rope_scaling", c.max_position_embeddings));
  }
  c.rope_theta = theta.value_or(10000.0);
  if (c.rope_theta <= 0) return FieldError("rope_theta", "must be positive");

  ASSIGN_OR_RETURN(std::optional<bool> tie, OptBool(j, "tie_word_embeddings"));
  c.tie_word_embeddings = tie.value_or(false);
  ASSIGN_OR_RETURN(std::optional<std::string> dtype, OptString(j, "torch_dtype"));
  if (!dtype.has_value()) {
    ASSIGN_OR_RETURN(dtype, OptString(j, "dtype"));
  }
  c.torch_dtype = dtype.value_or("bfloat16");
  ASSIGN_OR_RETURN(c.bos_token_id, OptInt(j, "bos_token_id"));
  ASSIGN_OR_RETURN(c.eos_token_ids, IntOrIntList(j, "eos_token_id"));
  if (const json* q = Find(j, "quantization_config"); q != nullptr) {
    ASSIGN_OR_RETURN(QuantizationConfig quant, ParseQuantization(*q));
    c.quantization = std::move(quant);
  }
  RETURN_IF_ERROR(ValidateConfig(c));
  return c;
}

namespace {
absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (!std::filesystem::exists(path)) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open"));
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  return ss.str();
}

absl::Status Annotate(const absl::Status& s, const std::string& path) {
  return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
}
}  // namespace

absl::StatusOr<ModelConfig> ModelConfig::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  absl::StatusOr<ModelConfig> config = FromJson(text);
  if (!config.ok()) return Annotate(config.status(), path);
  return config;
}

absl::StatusOr<GenerationConfig> GenerationConfig::FromJson(std::string_view text) {
  ASSIGN_OR_RETURN(json j, ParseObject(text, "generation_config.json"));
  GenerationConfig g;
  ASSIGN_OR_RETURN(std::optional<bool> do_sample, OptBool(j, "do_sample"));
  g.do_sample = do_sample.value_or(false);
  ASSIGN_OR_RETURN(std::optional<double> temperature, OptNumber(j, "temperature"));
  g.temperature = temperature.value_or(1.0);
  if (g.temperature < 0) return FieldError("temperature", "must be >= 0");
  // top_k null disables top-k filtering, which 0 also means in transformers.
  ASSIGN_OR_RETURN(std::optional<int64_t> top_k, OptInt(j, "top_k"));
  if (j.contains("top_k") && j["top_k"].is_null()) top_k = 0;
  g.top_k = top_k.value_or(50);
  if (g.top_k < 0) return FieldError("top_k", "must be >= 0");
  ASSIGN_OR_RETURN(std::optional<double> top_p, OptNumber(j, "top_p"));
  g.top_p = top_p.value_or(1.0);
  if (g.top_p < 0 || g.top_p > 1) return FieldError("top_p", "must be in [0, 1]");
  ASSIGN_OR_RETURN(g.min_p, OptNumber(j, "min_p"));
  if (g.min_p.has_value() && (*g.min_p < 0 || *g.min_p > 1)) return FieldError("min_p", "must be in [0, 1]");
  ASSIGN_OR_RETURN(std::optional<double> penalty, OptNumber(j, "repetition_penalty"));
  g.repetition_penalty = penalty.value_or(1.0);
  if (g.repetition_penalty <= 0) return FieldError("repetition_penalty", "must be positive");
  ASSIGN_OR_RETURN(g.eos_token_ids, IntOrIntList(j, "eos_token_id"));
  ASSIGN_OR_RETURN(g.pad_token_id, OptInt(j, "pad_token_id"));
  ASSIGN_OR_RETURN(g.bos_token_id, OptInt(j, "bos_token_id"));
  ASSIGN_OR_RETURN(g.max_new_tokens, OptInt(j, "max_new_tokens"));
  if (g.max_new_tokens.has_value() && *g.max_new_tokens <= 0) {
    return FieldError("max_new_tokens", "must be positive");
  }
  return g;
}

absl::StatusOr<GenerationConfig> GenerationConfig::FromModelDir(const std::string& dir,
                                                                const ModelConfig& model) {
  const std::string path = (std::filesystem::path(dir) / "generation_config.json").string();
  GenerationConfig g;
  if (std::filesystem::exists(path)) {
    ASSIGN_OR_RETURN(std::string text, ReadFile(path));
    absl::StatusOr<GenerationConfig> parsed = FromJson(text);
    if (!parsed.ok()) return Annotate(parsed.status(), path);
    g = *std::move(parsed);
  }
  if (g.eos_token_ids.empty()) g.eos_token_ids = model.eos_token_ids;
  if (!g.bos_token_id.has_value()) g.bos_token_id = model.bos_token_id;
  return g;
}

}  // namespace moe::model
