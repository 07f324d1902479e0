// A request's sampling parameters: what the client may override and how unset fields resolve
// against the model's generation_config. Shared by the router (which validates requests at the
// edge) and the engine (which samples with the resolved values), so both read one definition.
#ifndef MOE_COMMON_REQUEST_SAMPLING_PARAMS_H_
#define MOE_COMMON_REQUEST_SAMPLING_PARAMS_H_

#include <cstdint>
#include <optional>

#include "absl/status/statusor.h"
#include "common/model/config.h"

namespace moe::request {

// Resolved sampling parameters of one request. Use ResolveSamplingParams() to fill unset fields
// from the model's generation_config.
struct SamplingParams {
  double temperature = 1.0;         // 0 means greedy
  int64_t top_k = 0;                // 0 or -1: disabled
  double top_p = 1.0;               // (0, 1]
  double min_p = 0.0;               // [0, 1]; 0 disabled
  double repetition_penalty = 1.0;  // > 0
  // vLLM/OpenAI semantics, over the generated tokens only: the logit of a token generated c > 0
  // times so far drops by frequency_penalty * c + presence_penalty. [-2, 2]; 0 disables.
  double presence_penalty = 0.0;
  double frequency_penalty = 0.0;
  uint64_t seed = 0;
  bool greedy() const { return temperature == 0.0; }
};

// Optional overrides from a request; unset fields take the generation_config defaults. If the
// generation_config has do_sample=false, the default temperature is 0 (greedy).
struct SamplingOverrides {
  std::optional<double> temperature;
  std::optional<int64_t> top_k;
  std::optional<double> top_p;
  std::optional<double> min_p;
  std::optional<double> repetition_penalty;
  // Not in generation_config: unset means 0.
  std::optional<double> presence_penalty;
  std::optional<double> frequency_penalty;
  std::optional<uint64_t> seed;
};

// INVALID_ARGUMENT naming the field for: temperature < 0, NaN or infinite, top_p outside (0, 1],
// top_k < -1, min_p outside [0, 1], repetition_penalty <= 0, NaN or infinite, presence_penalty or
// frequency_penalty outside [-2, 2] (NaN included). The checks apply to
// the resolved values, so an invalid generation_config default is reported the same way. An unset
// seed resolves to 0 (callers wanting fresh randomness per request pass their own).
absl::StatusOr<SamplingParams> ResolveSamplingParams(const SamplingOverrides& overrides,
                                                     const model::GenerationConfig& defaults);

// The checks above on resolved values, for callers that receive them from elsewhere (the engine
// checks every request it is given: an attention worker must not trust its caller's values).
absl::Status ValidateSamplingParams(const SamplingParams& params);

}  // namespace moe::request

#endif  // MOE_COMMON_REQUEST_SAMPLING_PARAMS_H_
