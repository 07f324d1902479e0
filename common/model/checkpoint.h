// A Hugging Face model directory's weights: model.safetensors, or shards listed by
// model.safetensors.index.json. Files are mmap'd read-only; lookups return views into them.
#ifndef MOE_COMMON_MODEL_CHECKPOINT_H_
#define MOE_COMMON_MODEL_CHECKPOINT_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/model/safetensors.h"
#include "common/tensor/tensor.h"

namespace moe::model {

class Checkpoint {
 public:
  // Opens every shard and validates every header. Errors name the file and what is wrong.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& model_dir);

  // NOT_FOUND naming the tensor when absent.
  absl::StatusOr<TensorView> Get(std::string_view name) const;
  bool Contains(std::string_view name) const;
  std::vector<std::string> TensorNames() const;  // sorted

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  absl::flat_hash_map<std::string, std::pair<const SafetensorsFile*, TensorView>> tensors_;
};

}  // namespace moe::model

#endif  // MOE_COMMON_MODEL_CHECKPOINT_H_
