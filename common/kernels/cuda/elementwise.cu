// Elementwise, normalisation, router and activation-quantization kernels (cuda_kernels.h).
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "common/kernels/cuda/cuda_kernels.h"
#include "common/kernels/cuda/cuda_status.h"
#include "common/kernels/cuda/device_math.cuh"

namespace moe::kernels::cuda {
namespace {

using internal::BadArg;
using internal::Bf16ToFloat;
using internal::BlockSum;
using internal::CheckNonNegative;
using internal::CheckPositive;
using internal::CheckPtr;
using internal::CheckStride;
using internal::FloatToBf16;
using internal::RoundBf16;

constexpr int kNormThreads = 128;
constexpr int kElemThreads = 256;

inline const uint16_t* Raw(const bf16* p) {
  return reinterpret_cast<const uint16_t*>(p);
}
inline uint16_t* Raw(bf16* p) {
  return reinterpret_cast<uint16_t*>(p);
}
inline unsigned GridFor(int64_t n, int threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

// Row r = (outer r / per_outer, inner r % per_outer) starts at x + outer * outer_stride +
// inner * dim. RmsNorm uses per_outer = 1, the QK-norm per_outer = num_heads.
__global__ void RmsNormKernel(const uint16_t* x, int64_t x_outer_stride, const uint16_t* w, int64_t dim,
                              int64_t per_outer, float eps, uint16_t* y, int64_t y_outer_stride) {
  __shared__ float smem[32];
  const int64_t r = blockIdx.x;
  const int64_t outer = r / per_outer, inner = r % per_outer;
  const uint16_t* xr = x + outer * x_outer_stride + inner * dim;
  uint16_t* yr = y + outer * y_outer_stride + inner * dim;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = Bf16ToFloat(xr[i]);
    ss += v * v;
  }
  const float variance = BlockSum(ss, smem) / static_cast<float>(dim);
  const float inv = 1.0f / sqrtf(variance + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float normed = RoundBf16(Bf16ToFloat(xr[i]) * inv);
    yr[i] = FloatToBf16(normed * Bf16ToFloat(w[i]));
  }
}

// One block per (token, head), one thread per rotation pair.
__global__ void RopeKernel(uint16_t* x, int64_t x_stride, int64_t num_heads, int64_t head_dim,
                           const int64_t* positions, const uint16_t* cos_table, const uint16_t* sin_table,
                           int64_t max_positions) {
  const int64_t t = blockIdx.x / num_heads, h = blockIdx.x % num_heads;
  const int64_t p = positions[t];
  if (p < 0 || p >= max_positions) return;
  const int64_t half = head_dim / 2;
  uint16_t* v = x + t * x_stride + h * head_dim;
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const float c = Bf16ToFloat(cos_table[p * half + i]);
    const float s = Bf16ToFloat(sin_table[p * half + i]);
    const float x1 = Bf16ToFloat(v[i]), x2 = Bf16ToFloat(v[i + half]);
    v[i] = FloatToBf16(RoundBf16(x1 * c) + RoundBf16(-x2 * s));
    v[i + half] = FloatToBf16(RoundBf16(x2 * c) + RoundBf16(x1 * s));
  }
}

__global__ void AddKernel(const uint16_t* a, const uint16_t* b, int64_t n, uint16_t* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = FloatToBf16(Bf16ToFloat(a[i]) + Bf16ToFloat(b[i]));
}

__global__ void SiluMulKernel(const uint16_t* gate, const uint16_t* up, int64_t n, uint16_t* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = Bf16ToFloat(gate[i]);
  const float silu = RoundBf16(g / (1.0f + expf(-g)));
  out[i] = FloatToBf16(silu * Bf16ToFloat(up[i]));
}

// One warp per row. Probabilities live in shared memory; the max, the softmax sum and the top-k
// sum run on lane 0 in the CPU's order (ascending expert, then rank order), the top-k selection is
// k rounds of a warp argmax with the CPU's tie rule (higher probability, then lower id; NaN last).
__global__ void TopKSoftmaxKernel(const uint16_t* logits, int64_t num_experts, int64_t k, bool norm_topk_prob,
                                  int32_t* ids, float* weights) {
  extern __shared__ float prob[];  // [num_experts]
  __shared__ float shared_max, shared_sum;
  __shared__ int32_t chosen_ids[64];
  const int64_t r = blockIdx.x;
  const uint16_t* row = logits + r * num_experts;
  const int lane = threadIdx.x;
  if (lane == 0) {
    float m = -INFINITY;
    for (int64_t e = 0; e < num_experts; ++e) m = fmaxf(m, Bf16ToFloat(row[e]));
    shared_max = m;
  }
  __syncwarp();
  for (int64_t e = lane; e < num_experts; e += 32) prob[e] = expf(Bf16ToFloat(row[e]) - shared_max);
  __syncwarp();
  if (lane == 0) {
    float sum = 0.0f;
    for (int64_t e = 0; e < num_experts; ++e) sum += prob[e];
    shared_sum = sum;
  }
  __syncwarp();
  for (int64_t e = lane; e < num_experts; e += 32) prob[e] /= shared_sum;
  __syncwarp();
  const int64_t chosen = k < num_experts ? k : num_experts;
  for (int64_t i = 0; i < chosen; ++i) {
    float best = -INFINITY;
    int32_t best_id = INT32_MAX;
    for (int64_t e = lane; e < num_experts; e += 32) {
      bool taken = false;
      for (int64_t j = 0; j < i; ++j) taken |= chosen_ids[j] == e;
      if (taken) continue;
      const float key = isnan(prob[e]) ? -INFINITY : prob[e];
      if (best_id == INT32_MAX || key > best || (key == best && e < best_id)) {
        best = key;
        best_id = static_cast<int32_t>(e);
      }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float other = __shfl_xor_sync(0xffffffffu, best, offset);
      const int32_t other_id = __shfl_xor_sync(0xffffffffu, best_id, offset);
      if (other_id != INT32_MAX &&
          (best_id == INT32_MAX || other > best || (other == best && other_id < best_id))) {
        best = other;
        best_id = other_id;
      }
    }
    if (lane == 0) chosen_ids[i] = best_id;
    __syncwarp();
  }
  if (lane == 0) {
    float top_sum = 0.0f;
    for (int64_t i = 0; i < chosen; ++i) top_sum += prob[chosen_ids[i]];
    for (int64_t i = 0; i < k; ++i) {
      if (i < chosen) {
        ids[r * k + i] = chosen_ids[i];
        weights[r * k + i] = norm_topk_prob ? prob[chosen_ids[i]] / top_sum : prob[chosen_ids[i]];
      } else {
        ids[r * k + i] = -1;
        weights[r * k + i] = 0.0f;
      }
    }
  }
}

__global__ void EmbedKernel(const uint16_t* table, int64_t vocab, int64_t hidden, const int32_t* ids,
                            uint16_t* out) {
  const int64_t t = blockIdx.x;
  const int64_t id = ids[t];
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    out[t * hidden + i] = (id >= 0 && id < vocab) ? table[id * hidden + i] : uint16_t{0};
  }
}

// One warp per (row, 128-column group): lane l holds columns 4l..4l+3 of the group.
__global__ void QuantizeFp8Kernel(const uint16_t* x, int64_t x_stride, int64_t k, int64_t num_groups,
                                  uint8_t* q, int64_t q_stride, float* scale, int64_t scale_ld) {
  const int64_t m = blockIdx.x;
  const int64_t g = static_cast<int64_t>(blockIdx.y) * (blockDim.x / 32) + threadIdx.x / 32;
  if (g >= num_groups) return;
  const int lane = threadIdx.x & 31;
  const int64_t k0 = g * 128 + lane * 4;
  float v[4];
  float amax = 0.0f;
  for (int i = 0; i < 4; ++i) {
    v[i] = k0 + i < k ? Bf16ToFloat(x[m * x_stride + k0 + i]) : 0.0f;
    amax = fmaxf(amax, fabsf(v[i]));
  }
  amax = internal::WarpMax(amax);
  const float s = fmaxf(amax, 1e-10f) / 448.0f;
  for (int i = 0; i < 4; ++i) {
    if (k0 + i >= k) break;
    const float c = fminf(fmaxf(v[i] / s, -448.0f), 448.0f);
    q[m * q_stride + k0 + i] = static_cast<uint8_t>(__nv_cvt_float_to_fp8(c, __NV_SATFINITE, __NV_E4M3));
  }
  if (lane == 0) scale[g * scale_ld + m] = s;
}

}  // namespace

absl::Status RmsNorm(const bf16* x, int64_t x_stride, int64_t num_rows, int64_t dim, const bf16* w, float eps,
                     bf16* y, int64_t y_stride, Stream stream) {
  constexpr absl::string_view kFn = "cuda::RmsNorm";
  RETURN_IF_ERROR(CheckNonNegative(kFn, "num_rows", num_rows));
  RETURN_IF_ERROR(CheckPositive(kFn, "dim", dim));
  RETURN_IF_ERROR(CheckStride(kFn, "x_stride", x_stride, dim));
  RETURN_IF_ERROR(CheckStride(kFn, "y_stride", y_stride, dim));
  if (!(eps >= 0.0f)) return BadArg(kFn, "eps", "must be >= 0");
  if (num_rows == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckPtr(kFn, "x", x));
  RETURN_IF_ERROR(CheckPtr(kFn, "w", w));
  RETURN_IF_ERROR(CheckPtr(kFn, "y", y));
  if (num_rows > INT32_MAX) return BadArg(kFn, "num_rows", "exceeds the grid limit");
  RmsNormKernel<<<static_cast<unsigned>(num_rows), kNormThreads, 0, internal::AsCuda(stream)>>>(
      Raw(x), x_stride, Raw(w), dim, 1, eps, Raw(y), y_stride);
  return internal::LaunchStatus(kFn);
}

absl::Status HeadRmsNorm(bf16* x, int64_t x_stride, int64_t num_tokens, int64_t num_heads, int64_t head_dim,
                         const bf16* w, float eps, Stream stream) {
  constexpr absl::string_view kFn = "cuda::HeadRmsNorm";
  RETURN_IF_ERROR(CheckNonNegative(kFn, "num_tokens", num_tokens));
  RETURN_IF_ERROR(CheckPositive(kFn, "num_heads", num_heads));
  RETURN_IF_ERROR(CheckPositive(kFn, "head_dim", head_dim));
  RETURN_IF_ERROR(CheckStride(kFn, "x_stride", x_stride, num_heads * head_dim));
  if (!(eps >= 0.0f)) return BadArg(kFn, "eps", "must be >= 0");
  if (num_tokens == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckPtr(kFn, "x", x));
  RETURN_IF_ERROR(CheckPtr(kFn, "w", w));
  if (num_tokens * num_heads > INT32_MAX)
    return BadArg(kFn, "num_tokens * num_heads", "exceeds the grid limit");
  RmsNormKernel<<<static_cast<unsigned>(num_tokens * num_heads), kNormThreads, 0, internal::AsCuda(stream)>>>(
      Raw(x), x_stride, Raw(w), head_dim, num_heads, eps, Raw(x), x_stride);
  return internal::LaunchStatus(kFn);
}

absl::Status ApplyRope(bf16* x, int64_t x_stride, int64_t num_tokens, int64_t num_heads,
                       const int64_t* positions, const DeviceRopeTable& table, Stream stream) {
  constexpr absl::string_view kFn = "cuda::ApplyRope";
  RETURN_IF_ERROR(CheckNonNegative(kFn, "num_tokens", num_tokens));
  RETURN_IF_ERROR(CheckPositive(kFn, "num_heads", num_heads));
  RETURN_IF_ERROR(CheckPositive(kFn, "table.head_dim", table.head_dim));
  if (table.head_dim % 2 != 0) return BadArg(kFn, "table.head_dim", "must be even");
  RETURN_IF_ERROR(CheckPositive(kFn, "table.max_positions", table.max_positions));
  RETURN_IF_ERROR(CheckStride(kFn, "x_stride", x_stride, num_heads * table.head_dim));
  if (num_tokens == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckPtr(kFn, "x", x));
  RETURN_IF_ERROR(CheckPtr(kFn, "positions", positions));
  RETURN_IF_ERROR(CheckPtr(kFn, "table.cos", table.cos));
  RETURN_IF_ERROR(CheckPtr(kFn, "table.sin", table.sin));
  if (num_tokens * num_heads > INT32_MAX)
    return BadArg(kFn, "num_tokens * num_heads", "exceeds the grid limit");
  const int threads = table.head_dim / 2 >= 64 ? 64 : 32;
  RopeKernel<<<static_cast<unsigned>(num_tokens * num_heads), threads, 0, internal::AsCuda(stream)>>>(
      Raw(x), x_stride, num_heads, table.head_dim, positions, Raw(table.cos), Raw(table.sin),
      table.max_positions);
  return internal::LaunchStatus(kFn);
}

absl::Status Add(const bf16* a, const bf16* b, int64_t n, bf16* out, Stream stream) {
  constexpr absl::string_view kFn = "cuda::Add";
  RETURN_IF_ERROR(CheckNonNegative(kFn, "n", n));
  if (n == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckPtr(kFn, "a", a));
  RETURN_IF_ERROR(CheckPtr(kFn, "b", b));
  RETURN_IF_ERROR(CheckPtr(kFn, "out", out));
  AddKernel<<<GridFor(n, kElemThreads), kElemThreads, 0, internal::AsCuda(stream)>>>(Raw(a), Raw(b), n,
                                                                                     Raw(out));
  return internal::LaunchStatus(kFn);
}

absl::Status SiluMul(const bf16* gate, const bf16* up, int64_t n, bf16* out, Stream stream) {
  constexpr absl::string_view kFn = "cuda::SiluMul";
  RETURN_IF_ERROR(CheckNonNegative(kFn, "n", n));
  if (n == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckPtr(kFn, "gate", gate));
  RETURN_IF_ERROR(CheckPtr(kFn, "up", up));
  RETURN_IF_ERROR(CheckPtr(kFn, "out", out));
  SiluMulKernel<<<GridFor(n, kElemThreads), kElemThreads, 0, internal::AsCuda(stream)>>>(Raw(gate), Raw(up),
                                                                                         n, Raw(out));
  return internal::LaunchStatus(kFn);
}

absl::Status TopKSoftmax(const bf16* logits, int64_t num_rows, int64_t num_experts, int64_t k,
                         bool norm_topk_prob, int32_t* ids, float* weights, Stream stream) {
  constexpr absl::string_view kFn = "cuda::TopKSoftmax";
  RETURN_IF_ERROR(CheckNonNegative(kFn, "num_rows", num_rows));
  RETURN_IF_ERROR(CheckPositive(kFn, "num_experts", num_experts));
  RETURN_IF_ERROR(CheckPositive(kFn, "k", k));
  if (num_experts > 1024)
    return BadArg(kFn, "num_experts", absl::StrCat("must be <= 1024, got ", num_experts));
  if (k > 64) return BadArg(kFn, "k", absl::StrCat("must be <= 64, got ", k));
  if (num_rows == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckPtr(kFn, "logits", logits));
  RETURN_IF_ERROR(CheckPtr(kFn, "ids", ids));
  RETURN_IF_ERROR(CheckPtr(kFn, "weights", weights));
  if (num_rows > INT32_MAX) return BadArg(kFn, "num_rows", "exceeds the grid limit");
  TopKSoftmaxKernel<<<static_cast<unsigned>(num_rows), 32, num_experts * sizeof(float),
                      internal::AsCuda(stream)>>>(Raw(logits), num_experts, k, norm_topk_prob, ids, weights);
  return internal::LaunchStatus(kFn);
}

absl::Status Embed(const bf16* table, int64_t vocab, int64_t hidden, const int32_t* ids, int64_t num_tokens,
                   bf16* out, Stream stream) {
  constexpr absl::string_view kFn = "cuda::Embed";
  RETURN_IF_ERROR(CheckPositive(kFn, "vocab", vocab));
  RETURN_IF_ERROR(CheckPositive(kFn, "hidden", hidden));
  RETURN_IF_ERROR(CheckNonNegative(kFn, "num_tokens", num_tokens));
  if (num_tokens == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckPtr(kFn, "table", table));
  RETURN_IF_ERROR(CheckPtr(kFn, "ids", ids));
  RETURN_IF_ERROR(CheckPtr(kFn, "out", out));
  if (num_tokens > INT32_MAX) return BadArg(kFn, "num_tokens", "exceeds the grid limit");
  EmbedKernel<<<static_cast<unsigned>(num_tokens), kElemThreads, 0, internal::AsCuda(stream)>>>(
      Raw(table), vocab, hidden, ids, Raw(out));
  return internal::LaunchStatus(kFn);
}

absl::Status QuantizeFp8PerToken(const bf16* x, int64_t x_stride, int64_t num_rows, int64_t k, uint8_t* q,
                                 int64_t q_stride, float* scale, int64_t scale_ld, Stream stream) {
  constexpr absl::string_view kFn = "cuda::QuantizeFp8PerToken";
  RETURN_IF_ERROR(CheckNonNegative(kFn, "num_rows", num_rows));
  RETURN_IF_ERROR(CheckPositive(kFn, "k", k));
  RETURN_IF_ERROR(CheckStride(kFn, "x_stride", x_stride, k));
  RETURN_IF_ERROR(CheckStride(kFn, "q_stride", q_stride, k));
  RETURN_IF_ERROR(CheckStride(kFn, "scale_ld", scale_ld, num_rows));
  if (num_rows == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckPtr(kFn, "x", x));
  RETURN_IF_ERROR(CheckPtr(kFn, "q", q));
  RETURN_IF_ERROR(CheckPtr(kFn, "scale", scale));
  if (num_rows > INT32_MAX) return BadArg(kFn, "num_rows", "exceeds the grid limit");
  const int64_t num_groups = (k + 127) / 128;
  constexpr int kWarps = 4;
  const dim3 grid(static_cast<unsigned>(num_rows), static_cast<unsigned>((num_groups + kWarps - 1) / kWarps));
  QuantizeFp8Kernel<<<grid, kWarps * 32, 0, internal::AsCuda(stream)>>>(Raw(x), x_stride, k, num_groups, q,
                                                                        q_stride, scale, scale_ld);
  return internal::LaunchStatus(kFn);
}

}  // namespace moe::kernels::cuda
