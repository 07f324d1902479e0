// The config.json of each `moectl make-model` preset (see make_model.h).
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/model_maker/make_model.h"
#include "nlohmann/json.hpp"

namespace moe::model_maker {
namespace {

using nlohmann::json;

// Qwen/Qwen3-30B-A3B's config.json, verbatim (docs/numerics.md#released-models).
json Qwen3_30B_A3B() {
  return json::parse(R"({
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
})");
}

// Qwen/Qwen3-235B-A22B differs from 30B-A3B in these fields (docs/numerics.md#released-models).
json Qwen3_235B_A22B() {
  json c = Qwen3_30B_A3B();
  c["hidden_size"] = 4096;
  c["intermediate_size"] = 12288;
  c["max_window_layers"] = 94;
  c["moe_intermediate_size"] = 1536;
  c["num_attention_heads"] = 64;
  c["num_hidden_layers"] = 94;
  return c;
}

json Tiny() {
  json c = Qwen3_30B_A3B();
  c["hidden_size"] = 128;
  c["intermediate_size"] = 256;
  c["max_position_embeddings"] = 4096;
  c["max_window_layers"] = 4;
  c["moe_intermediate_size"] = 128;
  c["num_attention_heads"] = 4;
  c["num_key_value_heads"] = 2;
  c["num_hidden_layers"] = 4;
  return c;
}

// A dense Qwen3 in the shape of the small Qwen3 releases (tied embeddings), shrunk.
json DenseTiny() {
  return json::parse(R"({
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "eos_token_id": 151645,
  "head_dim": 128, "hidden_act": "silu", "hidden_size": 128, "initializer_range": 0.02,
  "intermediate_size": 256, "max_position_embeddings": 4096, "max_window_layers": 2,
  "model_type": "qwen3", "num_attention_heads": 4, "num_hidden_layers": 2,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_scaling": null,
  "rope_theta": 1000000.0, "sliding_window": null, "tie_word_embeddings": true,
  "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": true,
  "use_sliding_window": false, "vocab_size": 151936
})");
}

}  // namespace

std::vector<std::string> PresetNames() {
  return {"tiny", "dense-tiny", "bench-30b-4l", "bench-235b-2l"};
}

absl::StatusOr<std::string> PresetConfigJson(const std::string& preset) {
  json c;
  if (preset == "tiny") {
    c = Tiny();
  } else if (preset == "dense-tiny") {
    c = DenseTiny();
  } else if (preset == "bench-30b-4l") {
    c = Qwen3_30B_A3B();
    c["num_hidden_layers"] = 4;
    c["max_window_layers"] = 4;
  } else if (preset == "bench-235b-2l") {
    c = Qwen3_235B_A22B();
    c["num_hidden_layers"] = 2;
    c["max_window_layers"] = 2;
  } else {
    return absl::NotFoundError(
        absl::StrCat("unknown preset '", preset, "' (known: tiny, dense-tiny, bench-30b-4l, bench-235b-2l)"));
  }
  return c.dump(2) + "\n";
}

}  // namespace moe::model_maker
