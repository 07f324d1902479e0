#include "tests/common/model/test_util.h"

#include <stdlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/tensor/bf16.h"
#include "common/tensor/fp8.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace moe::model::testing {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = absl::StrCat(base != nullptr && *base ? base : "/tmp", "/moe_model_test_XXXXXX");
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  const char* made = ::mkdtemp(buf.data());
  EXPECT_NE(made, nullptr) << "mkdtemp failed for " << pattern;
  path_ = made != nullptr ? made : pattern;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

TensorToWrite BytesTensor(const std::string& name, DType dtype, std::vector<int64_t> shape,
                          std::vector<uint8_t> bytes) {
  return {name, dtype, std::move(shape),
          [bytes = std::move(bytes)](uint8_t* dst) { std::memcpy(dst, bytes.data(), bytes.size()); }};
}

TensorToWrite PatternTensor(const std::string& name, DType dtype, std::vector<int64_t> shape, float base) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return {name, dtype, std::move(shape), [dtype, n, base](uint8_t* dst) {
            for (int64_t i = 0; i < n; ++i) {
              const float v = static_cast<float>(i % 7) * 0.25f + base;
              switch (dtype) {
                case DType::kBF16: {
                  bf16 b = FloatToBF16(v);
                  std::memcpy(dst + 2 * i, &b, 2);
                  break;
                }
                case DType::kF16: {
                  uint16_t h = FloatToHalf(v);
                  std::memcpy(dst + 2 * i, &h, 2);
                  break;
                }
                case DType::kF32:
                  std::memcpy(dst + 4 * i, &v, 4);
                  break;
                case DType::kF8E4M3:
                  dst[i] = FloatToFp8E4M3(v);
                  break;
                default:
                  std::memset(dst + i * DTypeSize(dtype), 0, DTypeSize(dtype));
              }
            }
          }};
}

std::string SmallMoeConfigJson(const std::string& extra) {
  nlohmann::json c = nlohmann::json::parse(R"({
    "model_type": "qwen3_moe", "vocab_size": 16, "hidden_size": 8, "intermediate_size": 12,
    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
    "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 4, "norm_topk_prob": true,
    "tie_word_embeddings": false, "eos_token_id": 151645, "bos_token_id": 151643})");
  c.merge_patch(nlohmann::json::parse(extra));
  return c.dump();
}

namespace {
void AddLinear(std::vector<TensorToWrite>* out, const std::string& module, int64_t rows, int64_t cols,
               bool fp8, DType scale_dtype) {
  if (!fp8) {
    out->push_back(PatternTensor(module + ".weight", DType::kBF16, {rows, cols}));
    return;
  }
  out->push_back(PatternTensor(module + ".weight", DType::kF8E4M3, {rows, cols}));
  out->push_back(PatternTensor(module + ".weight_scale_inv", scale_dtype,
                               {(rows + 127) / 128, (cols + 127) / 128}, 0.5f));
}
}  // namespace

std::vector<TensorToWrite> ModelTensors(const ModelConfig& c, bool fp8, DType scale_dtype) {
  std::vector<TensorToWrite> t;
  const int64_t h = c.hidden_size, d = c.head_dim;
  t.push_back(PatternTensor("model.embed_tokens.weight", DType::kBF16, {c.vocab_size, h}));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l);
    t.push_back(PatternTensor(p + ".input_layernorm.weight", DType::kBF16, {h}, 1.0f));
    AddLinear(&t, p + ".self_attn.q_proj", c.num_attention_heads * d, h, fp8, scale_dtype);
    AddLinear(&t, p + ".self_attn.k_proj", c.num_key_value_heads * d, h, fp8, scale_dtype);
    AddLinear(&t, p + ".self_attn.v_proj", c.num_key_value_heads * d, h, fp8, scale_dtype);
    AddLinear(&t, p + ".self_attn.o_proj", h, c.num_attention_heads * d, fp8, scale_dtype);
    t.push_back(PatternTensor(p + ".self_attn.q_norm.weight", DType::kBF16, {d}, 1.0f));
    t.push_back(PatternTensor(p + ".self_attn.k_norm.weight", DType::kBF16, {d}, 1.0f));
    t.push_back(PatternTensor(p + ".post_attention_layernorm.weight", DType::kBF16, {h}, 1.0f));
    if (c.IsMoeLayer(l)) {
      t.push_back(PatternTensor(p + ".mlp.gate.weight", DType::kBF16, {c.num_experts, h}));
      for (int64_t e = 0; e < c.num_experts; ++e) {
        const std::string ep = absl::StrCat(p, ".mlp.experts.", e);
        AddLinear(&t, ep + ".gate_proj", c.moe_intermediate_size, h, fp8, scale_dtype);
        AddLinear(&t, ep + ".up_proj", c.moe_intermediate_size, h, fp8, scale_dtype);
        AddLinear(&t, ep + ".down_proj", h, c.moe_intermediate_size, fp8, scale_dtype);
      }
    } else {
      AddLinear(&t, p + ".mlp.gate_proj", c.intermediate_size, h, fp8, scale_dtype);
      AddLinear(&t, p + ".mlp.up_proj", c.intermediate_size, h, fp8, scale_dtype);
      AddLinear(&t, p + ".mlp.down_proj", h, c.intermediate_size, fp8, scale_dtype);
    }
  }
  t.push_back(PatternTensor("model.norm.weight", DType::kBF16, {h}, 1.0f));
  if (!c.tie_word_embeddings)
    t.push_back(PatternTensor("lm_head.weight", DType::kBF16, {c.vocab_size, h}, 0.5f));
  return t;
}

void DropTensor(std::vector<TensorToWrite>* tensors, const std::string& name) {
  auto it =
      std::find_if(tensors->begin(), tensors->end(), [&](const TensorToWrite& t) { return t.name == name; });
  ASSERT_NE(it, tensors->end()) << name;
  tensors->erase(it);
}

void ReshapeTensor(std::vector<TensorToWrite>* tensors, const std::string& name, std::vector<int64_t> shape) {
  auto it =
      std::find_if(tensors->begin(), tensors->end(), [&](const TensorToWrite& t) { return t.name == name; });
  ASSERT_NE(it, tensors->end()) << name;
  *it = PatternTensor(name, it->dtype, std::move(shape));
}

std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return "";
  std::string bytes(static_cast<size_t>(in.tellg()), '\0');
  in.seekg(0);
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return bytes;
}

void WriteFileBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace moe::model::testing
