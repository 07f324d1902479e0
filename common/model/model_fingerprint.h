// The model fingerprint exchanged over control (expert_control.proto model_fingerprint): workers
// that were started on different models refuse to pair instead of computing garbage.
#ifndef MOE_COMMON_MODEL_MODEL_FINGERPRINT_H_
#define MOE_COMMON_MODEL_MODEL_FINGERPRINT_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace moe::model {

// "fnv1a64:<16 hex digits>" of the bytes of `model_dir`/config.json. The config fixes every shape
// and the quantization; two directories made with different presets or dtypes differ. NOT_FOUND
// naming the file when it cannot be read.
absl::StatusOr<std::string> ModelFingerprint(const std::string& model_dir);

// The same hash of arbitrary bytes (exposed for tests).
std::string FingerprintBytes(std::string_view bytes);

}  // namespace moe::model

#endif  // MOE_COMMON_MODEL_MODEL_FINGERPRINT_H_
