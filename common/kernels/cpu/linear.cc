// Linear: dispatch, FP8 activation quantization and the portable path. See linear_internal.h
// for the fixed reduction order every path follows.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/kernels/cpu/cpu_features.h"
#include "common/kernels/cpu/kernels.h"
#include "common/kernels/cpu/linear_internal.h"
#include "common/kernels/cpu/thread_pool.h"
#include "common/tensor/fp8.h"

namespace moe::kernels::cpu {
namespace internal {

float RoundToE4M3(float v) {
  const float a = std::fabs(v);
  float q;
  if (a < 0.015625f) {
    // Subnormal e4m3 range: the grid step is 2^-9. Adding 1.5*2^14 puts the binary point of the
    // sum at 2^-9, so the hardware add rounds to that grid with ties to even.
    volatile float shifted = a + 24576.0f;  // volatile: keep the compiler from folding (a+c)-c
    q = shifted - 24576.0f;
  } else {
    // Normal range: keep 3 of the 23 mantissa bits, round half to even.
    uint32_t u;
    std::memcpy(&u, &a, sizeof(u));
    u = (u + 0x7ffffu + ((u >> 20) & 1u)) & 0xfff00000u;
    std::memcpy(&q, &u, sizeof(q));
  }
  return std::copysign(q, v);
}

void QuantizeRowFp8(const bf16* x, int64_t k, float* aq, float* scale) {
  const int64_t num_groups = (k + kFp8BlockSize - 1) / kFp8BlockSize;
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t k0 = g * kFp8BlockSize;
    const int64_t k1 = std::min(k, k0 + kFp8BlockSize);
    float amax = 0.0f;
    for (int64_t i = k0; i < k1; ++i) amax = std::max(amax, std::fabs(BF16ToFloat(x[i])));
    // eps keeps an all-zero group finite (transformers would produce NaN there; §3.5).
    const float s = std::max(amax, 1e-10f) / kFp8E4M3Max;
    scale[g] = s;
    for (int64_t i = k0; i < k1; ++i) {
      const float v = std::clamp(BF16ToFloat(x[i]) / s, -kFp8E4M3Max, kFp8E4M3Max);
      aq[i] = RoundToE4M3(v);
    }
    for (int64_t i = k1; i < k0 + kFp8BlockSize; ++i) aq[i] = 0.0f;
  }
}

void LinearBf16TaskPortable(const Bf16Task& t, int64_t n0, int64_t n1) {
  for (int64_t m = 0; m < t.num_rows; ++m) {
    const bf16* x = t.x + m * t.x_stride;
    for (int64_t n = n0; n < n1; ++n) {
      const bf16* w = t.w + n * t.k;
      float lane[16] = {};
      for (int64_t c = 0; c < t.k; c += 32) {
        for (int i = 0; i < 16; ++i) {
          const int64_t odd = c + 2 * i + 1, even = c + 2 * i;
          if (odd < t.k) lane[i] += BF16ToFloat(x[odd]) * BF16ToFloat(w[odd]);
          if (even < t.k) lane[i] += BF16ToFloat(x[even]) * BF16ToFloat(w[even]);
        }
      }
      t.y[m * t.y_stride + n] = FloatToBF16(Reduce16(lane));
    }
  }
}

void LinearFp8TaskPortable(const Fp8Task& t, int64_t n0, int64_t n1) {
  const float* table = Fp8E4M3Table();
  for (int64_t m = 0; m < t.num_rows; ++m) {
    const float* a = t.aq + m * t.aq_stride;
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* w = t.w + n * t.k;
      const float* ws = t.w_scale_inv + (n / kFp8BlockSize) * t.num_k_blocks;
      float total = 0.0f;
      for (int64_t kb = 0; kb < t.num_k_blocks; ++kb) {
        const int64_t k0 = kb * kFp8BlockSize;
        const int64_t k1 = std::min(t.k, k0 + kFp8BlockSize);
        float lane[16] = {};
        for (int64_t c = k0; c < k1; c += 64) {
          for (int64_t h : {0, 8}) {
            for (int i = 0; i < 16; ++i) {
              const int64_t j = c + 16 * (i / 4) + 2 * (i % 4) + h;
              if (j + 1 < k1) lane[i] += a[j + 1] * table[w[j + 1]];
              if (j < k1) lane[i] += a[j] * table[w[j]];
            }
          }
        }
        total += (Reduce16(lane) * t.a_scale[m * t.num_k_blocks + kb]) * ws[kb];
      }
      t.y[m * t.y_stride + n] = FloatToBF16(total);
    }
  }
}

}  // namespace internal

namespace {

// Per-thread scratch for quantized activations, grown as needed and reused across calls.
std::vector<float>& ScratchFloats(size_t size) {
  thread_local std::vector<float> buffer;
  if (buffer.size() < size) buffer.resize(size);
  return buffer;
}

}  // namespace

void Linear(const bf16* x, int64_t x_stride, int64_t num_rows, const LinearWeight& w, bf16* y,
            int64_t y_stride) {
  const int64_t n = w.out_features, k = w.in_features;
  if (num_rows <= 0 || n <= 0) return;
  const bool avx = ActiveIsa() == Isa::kAvx512Bf16;
  const int64_t num_tasks = (n + internal::kLinearColumnsPerTask - 1) / internal::kLinearColumnsPerTask;
  ThreadPool& pool = ThreadPool::Current();
  auto range = [n](int64_t task, int64_t* n0, int64_t* n1) {
    *n0 = task * internal::kLinearColumnsPerTask;
    *n1 = std::min(n, *n0 + internal::kLinearColumnsPerTask);
  };

  if (w.dtype == DType::kBF16) {
    const internal::Bf16Task t{x, x_stride, num_rows, static_cast<const bf16*>(w.data), k, y,
                               y_stride};
    pool.ParallelFor(num_tasks, [&](int64_t task) {
      int64_t n0, n1;
      range(task, &n0, &n1);
      if (avx) {
        internal::LinearBf16TaskAvx512(t, n0, n1);
      } else {
        internal::LinearBf16TaskPortable(t, n0, n1);
      }
    });
    return;
  }
  if (w.dtype == DType::kF8E4M3) {
    const bool avx_fp8 = avx && internal::Fp8Avx512Supported();
    const int64_t num_k_blocks = w.ScaleCols();
    const int64_t aq_stride = num_k_blocks * kFp8BlockSize;
    // The same scratch holds either layout (natural for the portable path, packed for AVX-512).
    std::vector<float>& scratch =
        ScratchFloats(static_cast<size_t>(num_rows * (aq_stride + num_k_blocks)));
    float* aq = scratch.data();
    float* a_scale = aq + num_rows * aq_stride;
    auto quantize = [&](int64_t m) {
      if (avx_fp8) {
        internal::QuantizeRowFp8PackedAvx512(x + m * x_stride, k, aq + m * aq_stride,
                                             a_scale + m * num_k_blocks);
      } else {
        internal::QuantizeRowFp8(x + m * x_stride, k, aq + m * aq_stride,
                                 a_scale + m * num_k_blocks);
      }
    };
    pool.ParallelFor(num_rows, quantize);  // runs inline for a single row
    internal::Fp8Task t{};
    t.aq = avx_fp8 ? nullptr : aq;
    t.aq_packed = avx_fp8 ? aq : nullptr;
    t.aq_stride = aq_stride;
    t.a_scale = a_scale;
    t.num_rows = num_rows;
    t.w = static_cast<const uint8_t*>(w.data);
    t.w_scale_inv = w.scale_inv;
    t.k = k;
    t.num_k_blocks = num_k_blocks;
    t.y = y;
    t.y_stride = y_stride;
    pool.ParallelFor(num_tasks, [&](int64_t task) {
      int64_t n0, n1;
      range(task, &n0, &n1);
      if (avx_fp8) {
        internal::LinearFp8TaskAvx512(t, n0, n1);
      } else {
        internal::LinearFp8TaskPortable(t, n0, n1);
      }
    });
    return;
  }
  // Unsupported weight dtype: the loader only produces bf16 and e4m3 weights. Zero the output
  // rather than leave garbage, so a misuse is visible in tests.
  for (int64_t m = 0; m < num_rows; ++m) std::memset(y + m * y_stride, 0, n * sizeof(bf16));
}

}  // namespace moe::kernels::cpu
