// safetensors files (docs/numerics.md#safetensors-and-checkpoints): a u64 LE header length N,
// N bytes of JSON, then the data buffer. Reading maps the file and validates the header fully
// before any tensor is handed out, so a corrupt file is an error and never an out-of-bounds read.
#ifndef MOE_COMMON_MODEL_SAFETENSORS_H_
#define MOE_COMMON_MODEL_SAFETENSORS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tensor/tensor.h"

namespace moe::model {

inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

class SafetensorsFile {
 public:
  // INVALID_ARGUMENT (naming `path`) for: short file, header over 100 MB or past the end, bad JSON,
  // unknown dtype, shape/byte-size mismatch, offsets out of range, overlapping, or not tiling the
  // buffer exactly. NOT_FOUND if the file is missing.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Writes a safetensors file (header padded with spaces to a multiple of 8, tensors in the order
// given). Streams: each tensor's bytes are produced by `fill` into a scratch buffer of exactly
// NumElements * DTypeSize bytes just before it is written, so multi-GB files need no more memory
// than their largest tensor. Used by `moectl make-model` and tests.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::function<void(uint8_t* dst)> fill;
};
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace moe::model

#endif  // MOE_COMMON_MODEL_SAFETENSORS_H_
