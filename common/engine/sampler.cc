// Sampling as transformers' generate does it (docs/numerics.md#sampling, logits_process.py).
//
// Random stream (part of the reproducibility contract; changing it changes every seeded output):
//   mix(z)  = SplitMix64's output function:
//             z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9; z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
//             return z ^ (z >> 31)                                    (all arithmetic mod 2^64)
//   gamma   = 0x9E3779B97F4A7C15
//   key     = mix(seed + gamma)              (the first SplitMix64 output for state `seed`)
//   bits    = mix(key + (step + 1) * gamma)  (output `step` of the SplitMix64 stream from `key`)
//   u       = (bits >> 11) * 2^-53           (a double in [0, 1))
// Hashing the seed first keeps seeds s and s + gamma from producing shifted copies of one stream.
// The draw is an inverse CDF over the kept tokens in ascending token id order: with p_i the fp32
// probabilities and C_i their running sum accumulated in double, total = C_last, the token is the
// smallest id with p_i > 0 and u * total < C_i (the last positive one if rounding leaves none).
// Each step uses exactly one u, so the token depends only on (logits, context, params, step).
#include "common/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <queue>

namespace moe::engine {

using request::SamplingParams;

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;

uint64_t SplitMix64Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// NaN compares false with everything, which would make max/sort/threshold results depend on
// position; mapping it to -inf gives it the one meaning that cannot be drawn.
float Clean(float x) {
  return std::isnan(x) ? kNegInf : x;
}

// fp32 scores after the penalties, in vLLM's order (vllm/model_executor/layers/utils.py
// apply_penalties):
//   1. repetition: for each distinct in-range id of `context` (prompt and output),
//      s < 0 ? s * p : s / p (transformers' RepetitionPenaltyLogitsProcessor, in fp32; vLLM's
//      s > 0 ? s / p : s * p is the same function, as 0 * p = 0 / p = 0);
//   2. frequency: s = s - f * c, for the ids generated c > 0 times (the last `num_generated` ids
//      of `context`), the product rounded to fp32 first as torch's float32 * int64 tensor is;
//   3. presence: s = s - pr for the same ids.
// Each step is one fp32 operation per token (x86-64's baseline has no FMA to contract 2. into).
std::vector<float> PenalizedScores(std::span<const float> logits, std::span<const int32_t> context,
                                   size_t num_generated, const SamplingParams& params) {
  std::vector<float> scores(logits.size());
  std::transform(logits.begin(), logits.end(), scores.begin(), Clean);
  if (params.repetition_penalty != 1.0) {
    const float p = static_cast<float>(params.repetition_penalty);
    std::vector<bool> done(scores.size(), false);
    for (const int32_t id : context) {
      if (id < 0 || static_cast<size_t>(id) >= scores.size() || done[id]) continue;
      done[id] = true;
      const float s = scores[id];
      scores[id] = s < 0.0f ? s * p : s / p;
    }
  }
  if ((params.frequency_penalty != 0.0 || params.presence_penalty != 0.0) && num_generated > 0) {
    const std::span<const int32_t> output = context.last(std::min(num_generated, context.size()));
    const float f = static_cast<float>(params.frequency_penalty);
    const float pr = static_cast<float>(params.presence_penalty);
    std::vector<int32_t> counts(scores.size(), 0);
    for (const int32_t id : output) {
      if (id >= 0 && static_cast<size_t>(id) < scores.size()) ++counts[id];
    }
    for (const int32_t id : output) {
      if (id < 0 || static_cast<size_t>(id) >= scores.size() || counts[id] == 0) continue;
      const float penalty = f * static_cast<float>(counts[id]);
      scores[id] = scores[id] - penalty;
      scores[id] = scores[id] - pr;
      counts[id] = 0;  // each distinct id once
    }
  }
  return scores;
}

// First index of the maximum (torch.argmax semantics on a NaN-free row).
int32_t ArgMax(const std::vector<float>& scores) {
  return static_cast<int32_t>(std::max_element(scores.begin(), scores.end()) - scores.begin());
}

// softmax over scores[ids[i]] into fp32 probabilities, computed in double. A +inf score takes
// all the mass (shared evenly among the +inf entries) instead of producing inf - inf = NaN.
std::vector<float> SoftmaxOver(const std::vector<float>& scores, const std::vector<int32_t>& ids) {
  std::vector<float> probs(ids.size(), 0.0f);
  if (ids.empty()) return probs;
  float max_score = kNegInf;
  for (const int32_t id : ids) max_score = std::max(max_score, scores[id]);
  if (max_score == kNegInf) return probs;
  if (std::isinf(max_score)) {
    size_t num_inf = 0;
    for (const int32_t id : ids) num_inf += scores[id] == max_score;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (scores[ids[i]] == max_score) probs[i] = static_cast<float>(1.0 / num_inf);
    }
    return probs;
  }
  std::vector<double> e(ids.size());
  double sum = 0.0;
  for (size_t i = 0; i < ids.size(); ++i) {
    e[i] = std::exp(static_cast<double>(scores[ids[i]]) - max_score);
    sum += e[i];
  }
  for (size_t i = 0; i < ids.size(); ++i) probs[i] = static_cast<float>(e[i] / sum);
  return probs;
}

// The k-th largest score counting duplicates (torch.topk(scores, k)[0][-1]), in one pass with a
// size-k min-heap: O(V log k) worst case but ~V comparisons for the usual small k, and no copy of
// the whole row.
float KthLargest(const std::vector<float>& scores, int64_t k) {
  std::priority_queue<float, std::vector<float>, std::greater<float>> heap;
  for (const float s : scores) {
    if (static_cast<int64_t>(heap.size()) < k) {
      heap.push(s);
    } else if (s > heap.top()) {
      heap.pop();
      heap.push(s);
    }
  }
  return heap.top();
}

// The top-p survivors of `ids` (see Process), ascending by id. Without top-k, `ids` can be the
// whole vocabulary; sorting 151936 entries costs ~15 ms, so first look for a bottom block (in the
// sorted order) whose total mass is already <= limit: all of it is removed whatever its internal
// order, so only the top `m` entries are sorted. m grows 4x until that holds (or covers all).
std::vector<int32_t> TopP(const std::vector<float>& scores, const std::vector<int32_t>& ids, float limit) {
  struct Entry {
    float score;
    int32_t id;
    float prob;
  };
  const std::vector<float> probs = SoftmaxOver(scores, ids);
  std::vector<Entry> entries(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) entries[i] = {scores[ids[i]], ids[i], probs[i]};
  // A strict total order, so partition and sort results do not depend on the algorithm.
  auto less = [](const Entry& a, const Entry& b) {
    return a.score < b.score || (a.score == b.score && a.id < b.id);
  };
  const size_t n = entries.size();
  size_t first_sorted = 0;
  double cum = 0.0;
  for (size_t m = 256; m < n; m *= 4) {
    std::nth_element(entries.begin(), entries.begin() + static_cast<ptrdiff_t>(n - m), entries.end(), less);
    double bottom = 0.0;
    for (size_t i = 0; i < n - m; ++i) bottom += entries[i].prob;
    if (static_cast<float>(bottom) <= limit) {
      first_sorted = n - m;
      cum = bottom;
      break;
    }
  }
  std::sort(entries.begin() + static_cast<ptrdiff_t>(first_sorted), entries.end(), less);
  size_t num_removed = first_sorted;
  for (size_t i = first_sorted; i + 1 < n; ++i) {
    cum += entries[i].prob;
    if (static_cast<float>(cum) > limit) break;
    num_removed = i + 1;
  }
  std::vector<int32_t> kept;
  kept.reserve(n - num_removed);
  for (size_t i = num_removed; i < n; ++i) kept.push_back(entries[i].id);
  std::sort(kept.begin(), kept.end());
  return kept;
}

// The warped scores (penalties, then temperature) and the ids the warpers keep, ascending. Tokens
// outside `kept` are the ones transformers sets to -inf; keeping the survivors as a list means
// top-p and min-p only touch the (usually tiny) top-k set instead of the 151936-entry row.
struct Processed {
  std::vector<float> scores;
  std::vector<int32_t> kept;
};

Processed Process(std::span<const float> logits, std::span<const int32_t> context, size_t num_generated,
                  const SamplingParams& params) {
  Processed out;
  out.scores = PenalizedScores(logits, context, num_generated, params);
  std::vector<float>& scores = out.scores;
  const int64_t vocab = static_cast<int64_t>(scores.size());
  if (params.greedy() || vocab == 0) {
    for (int64_t i = 0; i < vocab; ++i) {
      if (scores[i] != kNegInf) out.kept.push_back(static_cast<int32_t>(i));
    }
    return out;
  }

  // TemperatureLogitsWarper: scores / T in fp32 (torch casts the Python scalar to the tensor
  // dtype). Applied to the whole row before top-k because rounding can create new ties. A
  // temperature below the fp32 range would round to 0 and make 0 / 0 = NaN; the smallest positive
  // fp32 keeps the limit meaning (positive scores overflow to +inf, which take all the mass).
  if (params.temperature != 1.0) {
    const float t =
        std::max(static_cast<float>(params.temperature), std::numeric_limits<float>::denorm_min());
    for (float& s : scores) s = s / t;
  }

  // TopKLogitsWarper: k = min(max(top_k, 1), V); remove scores < k-th largest (ties kept).
  float threshold = kNegInf;
  if (params.top_k > 0) {
    const int64_t k = std::min<int64_t>(std::max<int64_t>(params.top_k, 1), vocab);
    threshold = KthLargest(scores, k);
  }
  for (int64_t i = 0; i < vocab; ++i) {
    if (scores[i] >= threshold && scores[i] != kNegInf) out.kept.push_back(static_cast<int32_t>(i));
  }

  // TopPLogitsWarper: sort ascending (equal scores in ascending id order, i.e. a stable sort),
  // cumsum of the softmax (torch accumulates a float cumsum in double and stores fp32), remove
  // cum <= 1 - top_p in fp32, always keep the best (last) token. The cumsum is monotone, so the
  // removed tokens form a prefix of the sorted order.
  if (params.top_p < 1.0 && !out.kept.empty()) {
    out.kept = TopP(scores, out.kept, static_cast<float>(1.0 - params.top_p));
  }

  // MinPLogitsWarper: remove probs < min_p * max(probs) (fp32 product); the best token always has
  // probability max(probs) >= min_p * max(probs) because min_p <= 1, so it is always kept.
  if (params.min_p > 0.0 && !out.kept.empty()) {
    const std::vector<float> probs = SoftmaxOver(scores, out.kept);
    const float max_prob = *std::max_element(probs.begin(), probs.end());
    const float limit = static_cast<float>(params.min_p) * max_prob;
    std::vector<int32_t> kept;
    for (size_t i = 0; i < out.kept.size(); ++i) {
      if (!(probs[i] < limit)) kept.push_back(out.kept[i]);
    }
    out.kept = std::move(kept);
  }
  return out;
}

// log_softmax of the raw row at `token`, in double. NaN entries count as -inf; rows whose maximum
// is not finite give -inf / log(1/#inf) instead of NaN.
class RawLogSoftmax {
 public:
  explicit RawLogSoftmax(std::span<const float> logits) : logits_(logits) {
    max_ = -std::numeric_limits<double>::infinity();
    for (const float x : logits) max_ = std::max(max_, static_cast<double>(Clean(x)));
    if (std::isinf(max_)) {
      for (const float x : logits) num_pos_inf_ += Clean(x) == max_;
      return;
    }
    // Each term is exp(x - max) <= 1, evaluated with the fp32 exp (about 5x cheaper than the
    // double one over 151936 logits, ~1e-7 relative error per term, far below the fp32 result's
    // resolution) and accumulated in double; max and the final subtraction stay in double.
    double sum = 0.0;
    for (const float x : logits) {
      sum += std::exp(static_cast<float>(static_cast<double>(Clean(x)) - max_));
    }
    log_sum_ = max_ + std::log(sum);
  }

  float At(int32_t token) const {
    const double x = Clean(logits_[token]);
    if (std::isinf(max_)) {
      if (max_ > 0 && x == max_) return static_cast<float>(-std::log(double(num_pos_inf_)));
      return kNegInf;
    }
    return static_cast<float>(x - log_sum_);
  }

 private:
  std::span<const float> logits_;
  double max_ = 0.0;
  double log_sum_ = 0.0;
  size_t num_pos_inf_ = 0;
};

}  // namespace

double Sampler::RandomUniform(uint64_t seed, uint64_t step) {
  const uint64_t key = SplitMix64Mix(seed + kGamma);
  const uint64_t bits = SplitMix64Mix(key + (step + 1) * kGamma);
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

std::vector<float> Sampler::ProcessLogits(std::span<const float> logits, std::span<const int32_t> context,
                                          size_t num_generated, const SamplingParams& params) {
  const Processed processed = Process(logits, context, num_generated, params);
  std::vector<float> out(logits.size(), kNegInf);
  for (const int32_t id : processed.kept) out[id] = processed.scores[id];
  return out;
}

std::vector<float> Sampler::Probabilities(std::span<const float> logits, std::span<const int32_t> context,
                                          size_t num_generated, const SamplingParams& params) {
  std::vector<float> out(logits.size(), 0.0f);
  if (logits.empty()) return out;
  if (params.greedy()) {
    out[ArgMax(PenalizedScores(logits, context, num_generated, params))] = 1.0f;
    return out;
  }
  const Processed processed = Process(logits, context, num_generated, params);
  const std::vector<float> probs = SoftmaxOver(processed.scores, processed.kept);
  for (size_t i = 0; i < processed.kept.size(); ++i) out[processed.kept[i]] = probs[i];
  return out;
}

SampleResult Sampler::Sample(std::span<const float> logits, std::span<const int32_t> context,
                             size_t num_generated, const SamplingParams& params, uint64_t step) {
  SampleResult result;
  if (logits.empty()) {
    result.token_id = -1;
    result.logprob = kNegInf;
    return result;
  }
  if (params.greedy()) {
    result.token_id = ArgMax(PenalizedScores(logits, context, num_generated, params));
  } else {
    const Processed processed = Process(logits, context, num_generated, params);
    // `kept` is ascending by id, which is the inverse-CDF order documented above.
    const std::vector<float> probs = SoftmaxOver(processed.scores, processed.kept);
    double total = 0.0;
    for (const float p : probs) total += p;
    const double target = RandomUniform(params.seed, step) * total;
    int32_t chosen = -1;
    double cum = 0.0;
    for (size_t i = 0; i < probs.size(); ++i) {
      if (probs[i] <= 0.0f) continue;
      cum += probs[i];
      chosen = processed.kept[i];
      if (target < cum) break;
    }
    // No positive probability survives only if every warped score is -inf (an all -inf/NaN row,
    // or temperature overflow); fall back to the greedy choice so the result is a valid id.
    result.token_id = chosen >= 0 ? chosen : ArgMax(PenalizedScores(logits, context, num_generated, params));
  }
  result.logprob = RawLogSoftmax(logits).At(result.token_id);
  return result;
}

std::vector<TokenLogprob> Sampler::TopLogprobs(std::span<const float> logits, int n) {
  std::vector<TokenLogprob> out;
  if (n <= 0 || logits.empty()) return out;
  const size_t count = std::min(static_cast<size_t>(n), logits.size());
  std::vector<int32_t> ids(logits.size());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
  std::partial_sort(ids.begin(), ids.begin() + static_cast<ptrdiff_t>(count), ids.end(),
                    [&](int32_t a, int32_t b) {
                      const float xa = Clean(logits[a]), xb = Clean(logits[b]);
                      return xa > xb || (xa == xb && a < b);
                    });
  const RawLogSoftmax log_softmax(logits);
  out.reserve(count);
  for (size_t i = 0; i < count; ++i) out.push_back({ids[i], log_softmax.At(ids[i])});
  return out;
}

}  // namespace moe::engine
