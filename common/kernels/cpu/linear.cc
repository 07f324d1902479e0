// Linear: dispatch, FP8 activation quantization and the portable path. See linear_internal.h
// for the fixed reduction order every path follows.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
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
    // eps keeps an all-zero group finite (transformers would produce NaN there;
    // docs/numerics.md#activation-quantization).
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
      t.y[m * t.y_stride + n] = Fp8OutputToBF16(total);
    }
  }
}

namespace {

Fp8Kernel DetectFp8Kernel() {
  const char* env = std::getenv("MOE_KERNEL_FP8");
  return env != nullptr && std::strcmp(env, "fma") == 0 ? Fp8Kernel::kFma : Fp8Kernel::kDot;
}

std::atomic<int>& Fp8KernelSlot() {
  static std::atomic<int> slot{static_cast<int>(DetectFp8Kernel())};
  return slot;
}

}  // namespace

Fp8Kernel ActiveFp8Kernel() {
  return static_cast<Fp8Kernel>(Fp8KernelSlot().load(std::memory_order_relaxed));
}

const char* Fp8KernelName(Fp8Kernel kernel) {
  return kernel == Fp8Kernel::kFma ? "fma" : "dot";
}

void SetFp8KernelForTesting(Fp8Kernel kernel) {
  Fp8KernelSlot().store(static_cast<int>(kernel), std::memory_order_relaxed);
}

}  // namespace internal

namespace {

// Per-thread scratch for quantized activations, grown as needed and reused across calls.
// The returned pointer is 64-byte aligned (kScratchAlign floats), so that packed activation rows
// (multiples of 128 elements) start on a cache line: the kernels' 64-byte loads never straddle two.
constexpr size_t kScratchAlign = 16;
float* ScratchFloats(size_t size) {
  thread_local std::vector<float> buffer;
  if (buffer.size() < size + kScratchAlign) buffer.resize(size + kScratchAlign);
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buffer.data()) + 63) & ~uintptr_t{63});
}

// Rounds a number of floats up to whole cache lines.
int64_t AlignFloats(int64_t n) {
  return (n + static_cast<int64_t>(kScratchAlign) - 1) / static_cast<int64_t>(kScratchAlign) *
         static_cast<int64_t>(kScratchAlign);
}

// Quantizing this many activation elements or fewer runs on the calling thread: a fork/join
// costs more than quantizing a few decode rows (which thread quantizes does not change results).
constexpr int64_t kInlineQuantizeElements = int64_t{1} << 16;

// One call of LinearGrouped, ready to run: its task descriptor and where its column tasks start
// in the grouped task space.
struct PreparedCall {
  enum class Kind { kBf16, kFp8, kUnsupported } kind = Kind::kUnsupported;
  int64_t n = 0;
  int64_t first_task = 0;
  internal::Bf16Task bf16{};
  internal::Fp8Task fp8{};
};

// One activation matrix to quantize for FP8 calls (shared by consecutive calls on the same x).
struct QuantizeJob {
  const bf16* x;
  int64_t x_stride;
  int64_t num_rows;
  int64_t k;
  int64_t num_k_blocks;
  float* aq;
  float* a_scale;
  int64_t first_row;  // index of its first row among all rows to quantize
};

}  // namespace

void LinearGrouped(std::span<const LinearCall> calls) {
  const bool avx = ActiveIsa() == Isa::kAvx512Bf16;
  const bool avx_fp8 = avx && internal::Fp8Avx512Supported();
  const bool avx_fp8_dot = avx_fp8 && internal::ActiveFp8Kernel() == internal::Fp8Kernel::kDot;
  const bool avx2 = ActiveIsa() == Isa::kAvx2Fma;
  std::vector<PreparedCall> prepared(calls.size());
  std::vector<QuantizeJob> jobs;

  // Pass 1: scratch size for FP8 activations. Consecutive FP8 calls that read the same activation
  // rows with the same k (e.g. gate and up of one expert) share one quantization.
  auto same_input = [](const LinearCall& a, const LinearCall& b) {
    return a.x == b.x && a.x_stride == b.x_stride && a.num_rows == b.num_rows &&
           a.w->in_features == b.w->in_features;
  };
  size_t scratch_floats = 0;
  const LinearCall* last_fp8 = nullptr;
  for (const LinearCall& c : calls) {
    if (c.num_rows <= 0 || c.w->out_features <= 0 || c.w->dtype != DType::kF8E4M3) continue;
    if (last_fp8 == nullptr || !same_input(*last_fp8, c)) {
      const int64_t num_k_blocks = c.w->ScaleCols();
      scratch_floats += static_cast<size_t>(c.num_rows * num_k_blocks * kFp8BlockSize +
                                            AlignFloats(c.num_rows * num_k_blocks));
    }
    last_fp8 = &c;
  }
  // The same scratch holds any layout (natural for the portable path, packed for AVX-512/AVX2;
  // the dot kernel's bf16 words fill half of it).
  float* scratch = scratch_floats > 0 ? ScratchFloats(scratch_floats) : nullptr;

  // Pass 2: task descriptors, task offsets and quantization jobs.
  int64_t total_tasks = 0, total_quantize_rows = 0, total_quantize_elements = 0;
  last_fp8 = nullptr;
  for (size_t i = 0; i < calls.size(); ++i) {
    const LinearCall& c = calls[i];
    PreparedCall& p = prepared[i];
    const LinearWeight& w = *c.w;
    const int64_t n = w.out_features, k = w.in_features;
    p.n = n;
    p.first_task = total_tasks;
    if (c.num_rows <= 0 || n <= 0) continue;
    total_tasks += (n + internal::kLinearColumnsPerTask - 1) / internal::kLinearColumnsPerTask;
    if (w.dtype == DType::kBF16) {
      p.kind = PreparedCall::Kind::kBf16;
      p.bf16 = internal::Bf16Task{c.x, c.x_stride, c.num_rows, static_cast<const bf16*>(w.data),
                                  k,   c.y,        c.y_stride};
    } else if (w.dtype == DType::kF8E4M3) {
      p.kind = PreparedCall::Kind::kFp8;
      const int64_t num_k_blocks = w.ScaleCols();
      const int64_t aq_stride = num_k_blocks * kFp8BlockSize;
      if (last_fp8 == nullptr || !same_input(*last_fp8, c)) {
        float* aq = scratch;
        float* a_scale = aq + c.num_rows * aq_stride;
        scratch = a_scale + AlignFloats(c.num_rows * num_k_blocks);  // the next job's rows stay aligned
        jobs.push_back(
            QuantizeJob{c.x, c.x_stride, c.num_rows, k, num_k_blocks, aq, a_scale, total_quantize_rows});
        total_quantize_rows += c.num_rows;
        total_quantize_elements += c.num_rows * k;
      }
      last_fp8 = &c;
      const QuantizeJob& job = jobs.back();
      internal::Fp8Task& t = p.fp8;
      const bool packed = (avx_fp8 && !avx_fp8_dot) || avx2;
      t.aq = packed || avx_fp8_dot ? nullptr : job.aq;
      t.aq_packed = packed ? job.aq : nullptr;
      t.aq_dot = avx_fp8_dot ? reinterpret_cast<const uint16_t*>(job.aq) : nullptr;
      t.aq_stride = aq_stride;
      t.a_scale = job.a_scale;
      t.num_rows = c.num_rows;
      t.w = static_cast<const uint8_t*>(w.data);
      t.w_scale_inv = w.scale_inv;
      t.k = k;
      t.num_k_blocks = num_k_blocks;
      t.y = c.y;
      t.y_stride = c.y_stride;
    } else {
      // Unsupported weight dtype: the loader only produces bf16 and e4m3 weights. Zero the
      // output rather than leave garbage, so a misuse is visible in tests.
      for (int64_t m = 0; m < c.num_rows; ++m) {
        std::memset(c.y + m * c.y_stride, 0, n * sizeof(bf16));
      }
    }
  }

  ThreadPool& pool = ThreadPool::Current();
  // Quantize every FP8 activation row (each row independently, so the split does not matter).
  if (total_quantize_rows > 0) {
    auto quantize = [&](int64_t row) {
      // Jobs are few; find the one holding this row.
      size_t j = 0;
      while (j + 1 < jobs.size() && jobs[j + 1].first_row <= row) ++j;
      const QuantizeJob& job = jobs[j];
      const int64_t m = row - job.first_row;
      const int64_t aq_stride = job.num_k_blocks * kFp8BlockSize;
      if (avx_fp8_dot) {
        internal::QuantizeRowFp8DotAvx512(job.x + m * job.x_stride, job.k,
                                          reinterpret_cast<uint16_t*>(job.aq) + m * aq_stride,
                                          job.a_scale + m * job.num_k_blocks);
      } else if (avx_fp8) {
        internal::QuantizeRowFp8PackedAvx512(job.x + m * job.x_stride, job.k, job.aq + m * aq_stride,
                                             job.a_scale + m * job.num_k_blocks);
      } else if (avx2) {
        internal::QuantizeRowFp8PackedAvx2(job.x + m * job.x_stride, job.k, job.aq + m * aq_stride,
                                           job.a_scale + m * job.num_k_blocks);
      } else {
        internal::QuantizeRowFp8(job.x + m * job.x_stride, job.k, job.aq + m * aq_stride,
                                 job.a_scale + m * job.num_k_blocks);
      }
    };
    if (total_quantize_elements <= kInlineQuantizeElements) {
      for (int64_t row = 0; row < total_quantize_rows; ++row) quantize(row);
    } else {
      pool.ParallelFor(total_quantize_rows, quantize);
    }
  }

  // All column tasks of all calls in one loop. Task i of a call covers the same columns as task i
  // of Linear, with the same task function, so every element is computed exactly as Linear does.
  pool.ParallelFor(total_tasks, [&](int64_t task) {
    // The call whose task range holds `task`: the last one with first_task <= task that has tasks.
    const auto it =
        std::upper_bound(prepared.begin(), prepared.end(), task,
                         [](int64_t value, const PreparedCall& p) { return value < p.first_task; });
    const PreparedCall& p = *(it - 1);
    const int64_t n0 = (task - p.first_task) * internal::kLinearColumnsPerTask;
    const int64_t n1 = std::min(p.n, n0 + internal::kLinearColumnsPerTask);
    if (p.kind == PreparedCall::Kind::kBf16) {
      if (avx) {
        internal::LinearBf16TaskAvx512(p.bf16, n0, n1);
      } else if (avx2) {
        internal::LinearBf16TaskAvx2(p.bf16, n0, n1);
      } else {
        internal::LinearBf16TaskPortable(p.bf16, n0, n1);
      }
    } else if (p.kind == PreparedCall::Kind::kFp8) {
      if (avx_fp8_dot) {
        internal::LinearFp8TaskAvx512Dot(p.fp8, n0, n1);
      } else if (avx_fp8) {
        internal::LinearFp8TaskAvx512(p.fp8, n0, n1);
      } else if (avx2) {
        internal::LinearFp8TaskAvx2(p.fp8, n0, n1);
      } else {
        internal::LinearFp8TaskPortable(p.fp8, n0, n1);
      }
    }
  });
}

void Linear(const bf16* x, int64_t x_stride, int64_t num_rows, const LinearWeight& w, bf16* y,
            int64_t y_stride) {
  const LinearCall call{x, x_stride, num_rows, &w, y, y_stride};
  LinearGrouped(std::span<const LinearCall>(&call, 1));
}

}  // namespace moe::kernels::cpu
