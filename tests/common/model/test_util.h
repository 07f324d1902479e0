// Helpers for the model tests: temp dirs under $TMPDIR and small checkpoints built with the writer.
#ifndef MOE_TESTS_COMMON_MODEL_TEST_UTIL_H_
#define MOE_TESTS_COMMON_MODEL_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/model/config.h"
#include "common/model/safetensors.h"

namespace moe::model::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A tensor whose bytes are given.
TensorToWrite BytesTensor(const std::string& name, DType dtype, std::vector<int64_t> shape,
                          std::vector<uint8_t> bytes);
// A tensor of `dtype` (BF16, F32, F16 or F8_E4M3) whose element i is float(i % 7) * 0.25 + base.
TensorToWrite PatternTensor(const std::string& name, DType dtype, std::vector<int64_t> shape,
                            float base = 0.0f);

// A small qwen3_moe config: vocab 16, hidden 8, 2 layers, 2 heads / 1 kv head, head_dim 4,
// 4 experts top-2, expert width 4, untied. `extra` is merged over it (a JSON object text).
std::string SmallMoeConfigJson(const std::string& extra = "{}");
// Every tensor of `config` (per-expert names) in BF16; with `fp8`, the linears are F8_E4M3 plus
// weight_scale_inv of `scale_dtype`.
std::vector<TensorToWrite> ModelTensors(const ModelConfig& config, bool fp8 = false,
                                        DType scale_dtype = DType::kF32);
// Removes the named tensor from the list (to test missing tensors) / replaces its shape.
void DropTensor(std::vector<TensorToWrite>* tensors, const std::string& name);
void ReshapeTensor(std::vector<TensorToWrite>* tensors, const std::string& name, std::vector<int64_t> shape);

std::string ReadFileBytes(const std::string& path);
void WriteFileBytes(const std::string& path, const std::string& bytes);

}  // namespace moe::model::testing

#endif  // MOE_TESTS_COMMON_MODEL_TEST_UTIL_H_
