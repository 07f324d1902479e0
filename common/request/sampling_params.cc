#include "common/request/sampling_params.h"

#include <cmath>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace moe::request {
namespace {

absl::Status Invalid(const std::string& what) {
  return absl::InvalidArgumentError(what);
}

}  // namespace

absl::StatusOr<SamplingParams> ResolveSamplingParams(const SamplingOverrides& overrides,
                                                     const model::GenerationConfig& defaults) {
  SamplingParams p;
  // transformers ignores temperature (and the other warpers) when do_sample is false, i.e. greedy.
  p.temperature = overrides.temperature.value_or(defaults.do_sample ? defaults.temperature : 0.0);
  p.top_k = overrides.top_k.value_or(defaults.top_k);
  p.top_p = overrides.top_p.value_or(defaults.top_p);
  p.min_p = overrides.min_p.value_or(defaults.min_p.value_or(0.0));
  p.repetition_penalty = overrides.repetition_penalty.value_or(defaults.repetition_penalty);
  p.presence_penalty = overrides.presence_penalty.value_or(0.0);
  p.frequency_penalty = overrides.frequency_penalty.value_or(0.0);
  p.seed = overrides.seed.value_or(0);
  if (absl::Status s = ValidateSamplingParams(p); !s.ok()) return s;
  return p;
}

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  if (!std::isfinite(p.temperature) || p.temperature < 0.0) {
    return Invalid(absl::StrCat("temperature must be a finite number >= 0, got ", p.temperature));
  }
  if (p.top_k < -1) {
    return Invalid(absl::StrCat("top_k must be >= -1 (0 or -1 disable it), got ", p.top_k));
  }
  if (!(p.top_p > 0.0 && p.top_p <= 1.0)) {
    return Invalid(absl::StrCat("top_p must be in (0, 1], got ", p.top_p));
  }
  if (!(p.min_p >= 0.0 && p.min_p <= 1.0)) {
    return Invalid(absl::StrCat("min_p must be in [0, 1], got ", p.min_p));
  }
  if (!std::isfinite(p.repetition_penalty) || p.repetition_penalty <= 0.0) {
    return Invalid(
        absl::StrCat("repetition_penalty must be a finite number > 0, got ", p.repetition_penalty));
  }
  // The negated comparison also rejects NaN; infinities are outside the range.
  if (!(p.presence_penalty >= -2.0 && p.presence_penalty <= 2.0)) {
    return Invalid(absl::StrCat("presence_penalty must be in [-2, 2], got ", p.presence_penalty));
  }
  if (!(p.frequency_penalty >= -2.0 && p.frequency_penalty <= 2.0)) {
    return Invalid(absl::StrCat("frequency_penalty must be in [-2, 2], got ", p.frequency_penalty));
  }
  return absl::OkStatus();
}

}  // namespace moe::request
