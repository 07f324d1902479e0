// Token sampling exactly as transformers' generate does it (docs/numerics.md#sampling): the
// processors in transformers' order on fp32 logits, then argmax (greedy) or a draw from the
// softmax. The random stream is this project's own (documented in sampler.cc) and depends only on
// (seed, step index), so a request's output is reproducible and independent of batching.
#ifndef MOE_COMMON_ENGINE_SAMPLER_H_
#define MOE_COMMON_ENGINE_SAMPLER_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "common/request/sampling_params.h"

namespace moe::engine {

struct SampleResult {
  int32_t token_id = 0;
  float logprob = 0.0f;  // log_softmax of the raw (unprocessed) fp32 logits at token_id
};

// A top-n entry of the raw distribution.
struct TokenLogprob {
  int32_t token_id = 0;
  float logprob = 0.0f;
};

// All functions are stateless and thread-safe. `logits` is [vocab] fp32 (the bf16 lm_head output
// upcast). NaN logits are treated as -inf (never chosen) so a bad row cannot crash or poison the
// draw. Context ids outside [0, vocab) are ignored by the penalties.
//
// `context` is the prompt followed by the ids generated so far, of which the last
// `num_generated` are the generated output (clamped to context.size()). The repetition penalty
// looks at all of `context`; the presence and frequency penalties (vLLM semantics) only at the
// output.
class Sampler {
 public:
  // Samples from `logits`. `step` is the index of the token being generated (0 for the first)
  // and keys the random draw. Pure function of its arguments. Greedy (temperature 0): argmax of
  // the penalized scores, first index on ties. Degenerate rows: empty logits give token_id -1; a
  // row with every score -inf after the processors gives the lowest id among the best penalized
  // scores (token 0 if all are -inf). logprob is -inf (never NaN) when the raw row has no finite
  // maximum at token_id.
  static SampleResult Sample(std::span<const float> logits, std::span<const int32_t> context,
                             size_t num_generated, const request::SamplingParams& params, uint64_t step);

  // transformers' `logits_processor(input_ids, scores)` output: [vocab] fp32 scores after the
  // penalties (repetition, then vLLM's frequency and presence) and, when sampling, temperature,
  // top-k, top-p and min-p; filtered tokens are -inf. For greedy params only the penalties are
  // applied (transformers adds the warpers only when do_sample). Sample() draws from the softmax of exactly
  // these scores. One documented divergence: top-p sorts stably (equal scores in ascending id order, so at an
  // exact tie on the boundary the lower id is removed first); transformers uses torch's unstable sort, whose
  // order of equal scores is implementation-defined.
  static std::vector<float> ProcessLogits(std::span<const float> logits, std::span<const int32_t> context,
                                          size_t num_generated, const request::SamplingParams& params);

  // softmax(ProcessLogits(...)): the [vocab] fp32 distribution Sample() draws from when sampling
  // (0 for filtered tokens). For greedy params, 1 at the greedy token and 0 elsewhere.
  static std::vector<float> Probabilities(std::span<const float> logits, std::span<const int32_t> context,
                                          size_t num_generated, const request::SamplingParams& params);

  // The uniform double in [0, 1) that keys the draw of (seed, step); the exact formula is
  // documented in sampler.cc and is part of the reproducibility contract (version-stable).
  static double RandomUniform(uint64_t seed, uint64_t step);

  // The n most likely tokens of the raw distribution, descending (ties: lower id first). Returns
  // min(n, vocab) entries; none for n <= 0.
  static std::vector<TokenLogprob> TopLogprobs(std::span<const float> logits, int n);
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_SAMPLER_H_
