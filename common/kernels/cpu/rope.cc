// RoPE tables (default and YaRN) and the NeoX rotate_half application (docs/numerics.md#rope-and-yarn).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "common/kernels/cpu/kernels.h"
#include "common/kernels/cpu/thread_pool.h"

namespace moe::kernels::cpu {
namespace {

// transformers' find_correction_dim: the dimension whose wavelength makes `num_rotations` turns
// over `max_positions` positions (double precision, as Python computes it).
double CorrectionDim(double num_rotations, double dim, double base, double max_positions) {
  return (dim * std::log(max_positions / (num_rotations * 2.0 * M_PI))) / (2.0 * std::log(base));
}

}  // namespace

// inv_freq follows transformers' _compute_default_rope_parameters / _compute_yarn_parameters
// (modeling_rope_utils.py), in fp32 where torch computes in fp32:
//   pos_freq[i] = base^(2i/D)                                  (fp32 pow)
//   default: inv_freq[i] = 1 / pos_freq[i]
//   yarn:    extrapolation = 1 / pos_freq, interpolation = 1 / (factor * pos_freq)
//            low, high = find_correction_range(beta_fast, beta_slow, D, base, original_max_pos)
//              (floor/ceil when truncate, then clamped to [0, D-1]); if low == high, high += 0.001
//            ramp[i] = clamp((i - low) / (high - low), 0, 1); extra = 1 - ramp
//            inv_freq = interpolation * (1 - extra) + extrapolation * extra
//            attention_factor = params.attention_factor if > 0, else 0.1 ln(factor) + 1 (1 when
//            factor <= 1)
//   cos/sin[p, i] = bf16(cos/sin(fp32(p) * inv_freq[i]) * attention_factor)
// Newer transformers replace `factor` by max_position_embeddings / original_max_position_embeddings
// when the latter is set; callers pass the factor their reference uses. When
// original_max_position_embeddings is 0 it defaults to max_positions.
RopeTable BuildRopeTable(const RopeParams& params, int64_t head_dim, int64_t max_positions) {
  RopeTable table;
  table.head_dim = head_dim;
  table.max_positions = max_positions;
  const int64_t half = head_dim / 2;
  if (half <= 0 || max_positions <= 0) return table;
  const float base = static_cast<float>(params.theta);
  std::vector<float> inv_freq(static_cast<size_t>(half));
  std::vector<float> pos_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    pos_freq[i] = std::pow(base, static_cast<float>(2 * i) / static_cast<float>(head_dim));
    inv_freq[i] = 1.0f / pos_freq[i];
  }
  float attention_factor = 1.0f;
  if (params.type == "yarn") {
    const double factor = params.factor;
    const double dim = static_cast<double>(head_dim);
    const double original = params.original_max_position_embeddings > 0
                                ? static_cast<double>(params.original_max_position_embeddings)
                                : static_cast<double>(max_positions);
    double low = CorrectionDim(params.beta_fast, dim, params.theta, original);
    double high = CorrectionDim(params.beta_slow, dim, params.theta, original);
    if (params.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, dim - 1);
    if (low == high) high += 0.001;
    const float low_f = static_cast<float>(low);
    const float span_f = static_cast<float>(high - low);
    const float factor_f = static_cast<float>(factor);
    for (int64_t i = 0; i < half; ++i) {
      const float ramp = std::clamp((static_cast<float>(i) - low_f) / span_f, 0.0f, 1.0f);
      const float extra = 1.0f - ramp;
      const float extrapolation = 1.0f / pos_freq[i];
      const float interpolation = 1.0f / (factor_f * pos_freq[i]);
      inv_freq[i] = interpolation * (1.0f - extra) + extrapolation * extra;
    }
    attention_factor = params.attention_factor > 0.0 ? static_cast<float>(params.attention_factor)
                       : factor <= 1.0               ? 1.0f
                                                     : static_cast<float>(0.1 * std::log(factor) + 1.0);
  } else if (params.attention_factor > 0.0) {
    attention_factor = static_cast<float>(params.attention_factor);
  }
  table.cos.resize(static_cast<size_t>(max_positions * half));
  table.sin.resize(static_cast<size_t>(max_positions * half));
  const int64_t per_task = 256;
  ThreadPool::Current().ParallelFor((max_positions + per_task - 1) / per_task, [&](int64_t task) {
    const int64_t p1 = std::min(max_positions, (task + 1) * per_task);
    for (int64_t p = task * per_task; p < p1; ++p) {
      for (int64_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(p) * inv_freq[i];  // one fp32 multiply
        // cos/sin of the fp32 angle, correctly rounded to fp32 (via double).
        const float c = static_cast<float>(std::cos(static_cast<double>(angle)));
        const float s = static_cast<float>(std::sin(static_cast<double>(angle)));
        table.cos[p * half + i] = FloatToBF16(c * attention_factor);
        table.sin[p * half + i] = FloatToBF16(s * attention_factor);
      }
    }
  });
  return table;
}

void ApplyRope(bf16* x, int64_t x_stride, int64_t num_tokens, int64_t num_heads, const int64_t* positions,
               const RopeTable& table) {
  const int64_t half = table.head_dim / 2;
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (positions[t] < 0 || positions[t] >= table.max_positions) {
      // A programming error upstream (the engine bounds positions by the table it built).
      std::fprintf(stderr, "ApplyRope: position %lld outside the table [0, %lld)\n",
                   static_cast<long long>(positions[t]), static_cast<long long>(table.max_positions));
      std::abort();
    }
  }
  ThreadPool::Current().ParallelFor((num_tokens + 15) / 16, [&](int64_t task) {
    const int64_t t1 = std::min(num_tokens, (task + 1) * 16);
    for (int64_t t = task * 16; t < t1; ++t) {
      const bf16* cos = table.cos.data() + positions[t] * half;
      const bf16* sin = table.sin.data() + positions[t] * half;
      for (int64_t h = 0; h < num_heads; ++h) {
        bf16* v = x + t * x_stride + h * table.head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = BF16ToFloat(v[i]), x2 = BF16ToFloat(v[i + half]);
          const float c = BF16ToFloat(cos[i]), s = BF16ToFloat(sin[i]);
          // q*cos + rotate_half(q)*sin as three bf16 ops: two products, then the sum.
          v[i] = FloatToBF16(RoundBF16(x1 * c) + RoundBF16(-x2 * s));
          v[i + half] = FloatToBF16(RoundBF16(x2 * c) + RoundBF16(x1 * s));
        }
      }
    }
  });
}

}  // namespace moe::kernels::cpu
