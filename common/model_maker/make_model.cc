#include "common/model_maker/make_model.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/model/config.h"
#include "common/model/safetensors.h"
#include "common/model_maker/weight_init.h"
#include "common/status/status_macros.h"
#include "common/tensor/bf16.h"
#include "common/tensor/fp8.h"
#include "common/tensor/linear_weight.h"
#include "common/tokenizer/qwen3_tokenizer_files.h"
#include "nlohmann/json.hpp"

namespace moe::model_maker {

using model::ModelConfig;
using model::TensorToWrite;
using model::WriteSafetensors;

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The hybrid Qwen3 generation_config.json (docs/numerics.md#generation-config).
constexpr char kGenerationConfig[] = R"({
  "bos_token_id": 151643,
  "do_sample": true,
  "eos_token_id": [
    151645,
    151643
  ],
  "pad_token_id": 151643,
  "temperature": 0.6,
  "top_k": 20,
  "top_p": 0.95,
  "transformers_version": "4.51.0"
}
)";

// Elements per parallel chunk: big enough that thread start-up is noise.
constexpr int64_t kMinChunkElements = 1 << 18;

enum class Init { kNorm, kLinear, kRouter, kEmbed, kLmHead };

// One logical weight of the model (an FP8 linear becomes two tensors on disk).
struct WeightSpec {
  std::string name;  // the .weight tensor name
  int64_t rows = 0;
  int64_t cols = 0;  // 0 for vectors
  Init init = Init::kLinear;
  bool fp8 = false;
};

void AddLinear(std::vector<WeightSpec>* specs, const std::string& module, int64_t out, int64_t in, bool fp8) {
  specs->push_back({module + ".weight", out, in, Init::kLinear, fp8});
}

std::vector<WeightSpec> ModelWeights(const ModelConfig& c, bool fp8) {
  const int64_t h = c.hidden_size, d = c.head_dim;
  std::vector<WeightSpec> s;
  s.push_back({"model.embed_tokens.weight", c.vocab_size, h, Init::kEmbed, false});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l);
    s.push_back({p + ".input_layernorm.weight", h, 0, Init::kNorm, false});
    AddLinear(&s, p + ".self_attn.q_proj", c.num_attention_heads * d, h, fp8);
    AddLinear(&s, p + ".self_attn.k_proj", c.num_key_value_heads * d, h, fp8);
    AddLinear(&s, p + ".self_attn.v_proj", c.num_key_value_heads * d, h, fp8);
    AddLinear(&s, p + ".self_attn.o_proj", h, c.num_attention_heads * d, fp8);
    s.push_back({p + ".self_attn.q_norm.weight", d, 0, Init::kNorm, false});
    s.push_back({p + ".self_attn.k_norm.weight", d, 0, Init::kNorm, false});
    s.push_back({p + ".post_attention_layernorm.weight", h, 0, Init::kNorm, false});
    if (c.IsMoeLayer(l)) {
      s.push_back({p + ".mlp.gate.weight", c.num_experts, h, Init::kRouter, false});
      for (int64_t e = 0; e < c.num_experts; ++e) {
        const std::string ep = absl::StrCat(p, ".mlp.experts.", e);
        AddLinear(&s, ep + ".gate_proj", c.moe_intermediate_size, h, fp8);
        AddLinear(&s, ep + ".up_proj", c.moe_intermediate_size, h, fp8);
        AddLinear(&s, ep + ".down_proj", h, c.moe_intermediate_size, fp8);
      }
    } else {
      AddLinear(&s, p + ".mlp.gate_proj", c.intermediate_size, h, fp8);
      AddLinear(&s, p + ".mlp.up_proj", c.intermediate_size, h, fp8);
      AddLinear(&s, p + ".mlp.down_proj", h, c.intermediate_size, fp8);
    }
  }
  s.push_back({"model.norm.weight", h, 0, Init::kNorm, false});
  if (!c.tie_word_embeddings) s.push_back({"lm_head.weight", c.vocab_size, h, Init::kLmHead, false});
  return s;
}

// mean and std of a weight's initialisation (make_model.h explains the choices).
std::pair<float, float> InitParams(const WeightSpec& w, int64_t hidden) {
  switch (w.init) {
    case Init::kNorm:
      return {1.0f, 0.1f};
    case Init::kLinear:
      return {0.0f, static_cast<float>(1.0 / std::sqrt(static_cast<double>(w.cols)))};
    case Init::kRouter:
      return {0.0f, static_cast<float>(3.0 / std::sqrt(static_cast<double>(hidden)))};
    case Init::kEmbed:
      return {0.0f, 1.0f};
    case Init::kLmHead:
      return {0.0f, static_cast<float>(1.0 / std::sqrt(static_cast<double>(hidden)))};
  }
  return {0.0f, 1.0f};
}

// The planted successor of lm_head (make_model.h): token t's most likely next token is
// Successor(t) = (kSuccessorMul * t + kSuccessorAdd) mod kPlantedVocab, for the ordinary tokens.
constexpr int64_t kPlantedVocab = 151643;  // ids below the first added token
constexpr int64_t kSuccessorMul = 40503;   // coprime with kPlantedVocab
constexpr int64_t kSuccessorAdd = 7919;

}  // namespace

int64_t PlantedSuccessor(int64_t token) {
  return (kSuccessorMul * (token % kPlantedVocab) + kSuccessorAdd) % kPlantedVocab;
}

int64_t PlantedPredecessor(int64_t v) {
  static const int64_t inverse = [] {
    int64_t t = 0, new_t = 1, r = kPlantedVocab, new_r = kSuccessorMul;
    while (new_r != 0) {
      const int64_t q = r / new_r;
      t = std::exchange(new_t, t - q * new_t);
      r = std::exchange(new_r, r - q * new_r);
    }
    return t < 0 ? t + kPlantedVocab : t;
  }();
  const int64_t shifted = ((v - kSuccessorAdd) % kPlantedVocab + kPlantedVocab) % kPlantedVocab;
  return static_cast<int64_t>((static_cast<__int128>(shifted) * inverse) % kPlantedVocab);
}

namespace {

// Rows [row_begin, row_end) of lm_head: noise plus kPlantedSuccessorGain / sqrt(H) times the (unrounded)
// embedding row of the row's predecessor token, rounded to bf16.
void FillLmHeadRows(uint64_t key, uint64_t embed_key, float noise_std, float planted_gain, int64_t hidden,
                    int64_t row_begin, int64_t row_end, bf16* out) {
  std::vector<float> noise(static_cast<size_t>(hidden)), planted(static_cast<size_t>(hidden));
  const float gain = planted_gain / std::sqrt(static_cast<float>(hidden));
  for (int64_t v = row_begin; v < row_end; ++v) {
    FillNormal(key, static_cast<uint64_t>(v * hidden), hidden, 0.0f, noise_std, noise.data());
    if (v < kPlantedVocab && planted_gain != 0.0f) {
      FillNormal(embed_key, static_cast<uint64_t>(PlantedPredecessor(v) * hidden), hidden, 0.0f, 1.0f,
                 planted.data());
      for (int64_t i = 0; i < hidden; ++i)
        noise[static_cast<size_t>(i)] += gain * planted[static_cast<size_t>(i)];
    }
    for (int64_t i = 0; i < hidden; ++i) out[v * hidden + i] = FloatToBF16(noise[static_cast<size_t>(i)]);
  }
}

// The bf16-rounded values of elements [first, first + n) of a weight, as floats.
void GenerateRounded(uint64_t key, const std::pair<float, float>& mean_std, int64_t first, int64_t n,
                     float* dst) {
  FillNormal(key, static_cast<uint64_t>(first), n, mean_std.first, mean_std.second, dst);
  for (int64_t i = 0; i < n; ++i) dst[i] = RoundBF16(dst[i]);
}

// FP8 block quantisation of one 128-row band of a [rows, cols] weight: writes the e4m3 codes of
// those rows (if `codes` is set) and the band's scale_inv row (if `scales` is set).
void QuantizeBand(uint64_t key, const std::pair<float, float>& mean_std, int64_t rows, int64_t cols,
                  int64_t band, uint8_t* codes, float* scales) {
  const int64_t r0 = band * kFp8BlockSize, r1 = std::min(rows, r0 + kFp8BlockSize);
  std::vector<float> values(static_cast<size_t>((r1 - r0) * cols));
  GenerateRounded(key, mean_std, r0 * cols, (r1 - r0) * cols, values.data());
  const int64_t col_blocks = (cols + kFp8BlockSize - 1) / kFp8BlockSize;
  for (int64_t cb = 0; cb < col_blocks; ++cb) {
    const int64_t c0 = cb * kFp8BlockSize, c1 = std::min(cols, c0 + kFp8BlockSize);
    float amax = 0.0f;
    for (int64_t r = 0; r < r1 - r0; ++r)
      for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(values[r * cols + c]));
    // transformers' quantizer: scale = 448 / amax, stored inverse 1 / scale. An all-zero block
    // (impossible for these inits, but defined) gets scale 1.
    const float scale = amax > 0.0f ? kFp8E4M3Max / amax : 1.0f;
    if (scales != nullptr) scales[cb] = 1.0f / scale;
    if (codes != nullptr) {
      for (int64_t r = 0; r < r1 - r0; ++r)
        for (int64_t c = c0; c < c1; ++c) {
          codes[(r0 + r) * cols + c] = FloatToFp8E4M3(values[r * cols + c] * scale);
        }
    }
  }
}

// The tensors on disk for the weights, with fills that generate them in parallel.
std::vector<TensorToWrite> TensorsToWrite(const std::vector<WeightSpec>& specs, const ModelConfig& c,
                                          uint64_t seed, int threads, float planted_gain, float embed_std,
                                          int64_t hot_experts, float hot_gain) {
  std::vector<TensorToWrite> out;
  for (const WeightSpec& w : specs) {
    const uint64_t key = TensorKey(seed, w.name);
    auto mean_std = InitParams(w, c.hidden_size);
    if (w.init == Init::kEmbed) mean_std.second = embed_std;
    std::vector<int64_t> shape =
        w.cols > 0 ? std::vector<int64_t>{w.rows, w.cols} : std::vector<int64_t>{w.rows};
    const int64_t n = w.rows * std::max<int64_t>(w.cols, 1);
    if (w.init == Init::kLmHead) {
      const uint64_t embed_key = TensorKey(seed, "model.embed_tokens.weight");
      const int64_t rows = w.rows, hidden = w.cols;
      out.push_back({w.name, DType::kBF16, shape, [=](uint8_t* dst) {
                       ParallelFor(rows, std::max<int64_t>(1, kMinChunkElements / hidden), threads,
                                   [&](int64_t begin, int64_t end) {
                                     FillLmHeadRows(key, embed_key, mean_std.second, planted_gain, hidden,
                                                    begin, end, reinterpret_cast<bf16*>(dst));
                                   });
                     }});
      continue;
    }
    if (!w.fp8) {
      // Skewed routing (MakeModelOptions::hot_experts): the router rows of the hot experts are
      // scaled by hot_gain, so their logits spread wider and they win the top-k far more often.
      const int64_t scaled_elements = w.init == Init::kRouter ? hot_experts * w.cols : 0;
      out.push_back(
          {w.name, DType::kBF16, shape, [key, mean_std, n, threads, scaled_elements, hot_gain](uint8_t* dst) {
             ParallelFor(n, kMinChunkElements, threads, [&](int64_t begin, int64_t end) {
               std::vector<float> tmp(static_cast<size_t>(std::min<int64_t>(end - begin, 1 << 16)));
               auto* out = reinterpret_cast<bf16*>(dst);
               for (int64_t i = begin; i < end; i += static_cast<int64_t>(tmp.size())) {
                 const int64_t m = std::min<int64_t>(end - i, static_cast<int64_t>(tmp.size()));
                 FillNormal(key, static_cast<uint64_t>(i), m, mean_std.first, mean_std.second, tmp.data());
                 for (int64_t j = 0; j < m; ++j) {
                   const float scale = i + j < scaled_elements ? hot_gain : 1.0f;
                   out[i + j] = FloatToBF16(tmp[j] * scale);
                 }
               }
             });
           }});
      continue;
    }
    const int64_t rows = w.rows, cols = w.cols;
    const int64_t bands = (rows + kFp8BlockSize - 1) / kFp8BlockSize;
    const int64_t col_blocks = (cols + kFp8BlockSize - 1) / kFp8BlockSize;
    const int64_t band_min = std::max<int64_t>(1, kMinChunkElements / (kFp8BlockSize * cols));
    out.push_back({w.name, DType::kF8E4M3, shape, [=](uint8_t* dst) {
                     ParallelFor(bands, band_min, threads, [&](int64_t begin, int64_t end) {
                       for (int64_t b = begin; b < end; ++b)
                         QuantizeBand(key, mean_std, rows, cols, b, dst, nullptr);
                     });
                   }});
    const std::string scale_name =
        w.name.substr(0, w.name.size() - std::string_view(".weight").size()) + ".weight_scale_inv";
    out.push_back({scale_name, DType::kF32, {bands, col_blocks}, [=](uint8_t* dst) {
                     auto* scales = reinterpret_cast<float*>(dst);
                     ParallelFor(bands, band_min, threads, [&](int64_t begin, int64_t end) {
                       for (int64_t b = begin; b < end; ++b) {
                         QuantizeBand(key, mean_std, rows, cols, b, nullptr, scales + b * col_blocks);
                       }
                     });
                   }});
  }
  return out;
}

int64_t TensorBytes(const TensorToWrite& t) {
  return static_cast<int64_t>(TensorView{t.dtype, t.shape, nullptr}.NumBytes());
}

// Splits tensors (in order) into contiguous shards: exactly `shards` of them when shards > 0
// (balanced by bytes, none empty), else as few as possible of at most `max_bytes` each.
absl::StatusOr<std::vector<std::vector<TensorToWrite>>> AssignShards(std::vector<TensorToWrite> tensors,
                                                                     int shards, int64_t max_bytes) {
  int64_t total = 0;
  for (const TensorToWrite& t : tensors) total += TensorBytes(t);
  const int64_t n = static_cast<int64_t>(tensors.size());
  if (shards > 0 && shards > n) {
    return absl::InvalidArgumentError(absl::StrCat("cannot split ", n, " tensors into ", shards, " shards"));
  }
  const int64_t target = shards > 0 ? (total + shards - 1) / shards : max_bytes;
  std::vector<std::vector<TensorToWrite>> out(1);
  int64_t current = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t bytes = TensorBytes(tensors[i]);
    const int64_t shard_index = static_cast<int64_t>(out.size()) - 1;
    bool next = !out.back().empty() && current + bytes > target;
    if (shards > 0) {
      next = next && shard_index < shards - 1;
      // Leave at least one tensor for every shard still to come.
      next = next || (!out.back().empty() && n - i == shards - 1 - shard_index);
    }
    if (next) {
      out.emplace_back();
      current = 0;
    }
    out.back().push_back(std::move(tensors[i]));
    current += bytes;
  }
  return out;
}

absl::Status WriteText(const fs::path& path, std::string_view text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(text.data(), static_cast<std::streamsize>(text.size()));
  f.close();
  if (!f) return absl::InternalError(absl::StrCat(path.string(), ": write failed"));
  return absl::OkStatus();
}

absl::Status PrepareOutDir(const MakeModelOptions& options) {
  std::error_code ec;
  const fs::path dir(options.out_dir);
  if (options.out_dir.empty()) return absl::InvalidArgumentError("--out is required");
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec)) {
      return absl::FailedPreconditionError(absl::StrCat(options.out_dir, " exists and is not a directory"));
    }
    if (!fs::is_empty(dir, ec) && !options.force) {
      return absl::FailedPreconditionError(
          absl::StrCat(options.out_dir, " exists and is not empty (use --force to overwrite)"));
    }
    // Stale weight files from an earlier run would be picked up by the checkpoint reader.
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind("model", 0) == 0 &&
          (name.ends_with(".safetensors") || name == "model.safetensors.index.json")) {
        fs::remove(entry.path(), ec);
        if (ec)
          return absl::InternalError(absl::StrCat(entry.path().string(), ": cannot remove: ", ec.message()));
      }
    }
  } else {
    fs::create_directories(dir, ec);
    if (ec) return absl::InternalError(absl::StrCat(options.out_dir, ": cannot create: ", ec.message()));
  }
  return absl::OkStatus();
}

json QuantizationConfigJson(const ModelConfig& c) {
  json not_convert = json::array({"lm_head"});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l);
    not_convert.push_back(p + ".input_layernorm");
    if (c.IsMoeLayer(l)) not_convert.push_back(p + ".mlp.gate");
    not_convert.push_back(p + ".post_attention_layernorm");
  }
  return json{{"activation_scheme", "dynamic"},
              {"fmt", "e4m3"},
              {"modules_to_not_convert", not_convert},
              {"quant_method", "fp8"},
              {"weight_block_size", {128, 128}}};
}

}  // namespace

absl::Status MakeModel(const MakeModelOptions& options) {
  absl::StatusOr<std::string> preset_json = PresetConfigJson(options.preset);
  if (!preset_json.ok()) return absl::InvalidArgumentError(preset_json.status().message());
  if (options.dtype != "bf16" && options.dtype != "fp8") {
    return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", options.dtype, "' (bf16 or fp8)"));
  }
  if (options.shards < 0) return absl::InvalidArgumentError("--shards must be >= 0");
  const bool fp8 = options.dtype == "fp8";
  ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromJson(*preset_json));
  if (options.hot_experts < 0 || options.hot_experts > config.num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("--hot-experts must be in [0, ", config.num_experts,
                                                   "] for preset ", options.preset, ", got ",
                                                   options.hot_experts));
  }
  if (!(options.hot_expert_gain > 0.0f) || !std::isfinite(options.hot_expert_gain)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--hot-expert-gain must be a positive number, got ", options.hot_expert_gain));
  }
  json config_json = json::parse(*preset_json);
  if (fp8) config_json["quantization_config"] = QuantizationConfigJson(config);
  const std::string config_text = config_json.dump(2) + "\n";
  // The written file must itself parse: this is the contract the rest of the system reads.
  RETURN_IF_ERROR(ModelConfig::FromJson(config_text).status());

  std::vector<TensorToWrite> tensors = TensorsToWrite(
      ModelWeights(config, fp8), config, options.seed, options.threads, options.planted_successor_gain,
      options.embed_std, options.hot_experts, options.hot_expert_gain);
  if (options.progress) {
    int64_t total_bytes = 0;
    for (const TensorToWrite& t : tensors) total_bytes += TensorBytes(t);
    auto done_bytes = std::make_shared<std::atomic<int64_t>>(0);
    for (TensorToWrite& t : tensors) {
      t.fill = [fill = std::move(t.fill), bytes = TensorBytes(t), done_bytes, total_bytes,
                progress = options.progress](uint8_t* dst) {
        fill(dst);
        progress(done_bytes->fetch_add(bytes) + bytes, total_bytes);
      };
    }
  }
  ASSIGN_OR_RETURN(auto shards, AssignShards(std::move(tensors), options.shards, options.max_shard_bytes));

  RETURN_IF_ERROR(PrepareOutDir(options));
  const fs::path dir(options.out_dir);
  RETURN_IF_ERROR(WriteText(dir / "config.json", config_text));
  RETURN_IF_ERROR(WriteText(dir / "generation_config.json", kGenerationConfig));
  ASSIGN_OR_RETURN(std::string tokenizer_json, tokenizer::EmbeddedQwen3TokenizerJson());
  RETURN_IF_ERROR(WriteText(dir / "tokenizer.json", tokenizer_json));
  RETURN_IF_ERROR(WriteText(dir / "tokenizer_config.json", tokenizer::EmbeddedQwen3TokenizerConfigJson()));

  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  if (shards.size() == 1 && options.shards == 0) {
    return WriteSafetensors((dir / "model.safetensors").string(), shards[0], metadata);
  }
  json weight_map = json::object();
  int64_t total = 0;
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string name = absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, shards.size());
    for (const TensorToWrite& t : shards[i]) {
      weight_map[t.name] = name;
      total += TensorBytes(t);
    }
    RETURN_IF_ERROR(WriteSafetensors((dir / name).string(), shards[i], metadata));
  }
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  return WriteText(dir / "model.safetensors.index.json", index.dump(2) + "\n");
}

}  // namespace moe::model_maker
