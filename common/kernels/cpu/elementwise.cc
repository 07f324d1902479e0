// Row-wise and elementwise kernels: RmsNorm, SiluMul, Add, Embed, TopKSoftmax. Plain C++ (the
// compiler vectorizes the lane loops); the same code and rounding on every CPU.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "common/kernels/cpu/kernels.h"
#include "common/kernels/cpu/linear_internal.h"
#include "common/kernels/cpu/thread_pool.h"

namespace moe::kernels::cpu {
namespace {

// Splits `num_items` items of `item_cost` elements each into tasks of roughly 64K elements, so
// small calls (one decode row) stay on the calling thread. Only the grouping depends on this;
// each item is computed the same way whatever task it lands in.
void ParallelOverItems(int64_t num_items, int64_t item_cost,
                       const std::function<void(int64_t, int64_t)>& fn) {
  if (num_items <= 0) return;
  const int64_t per_task = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, item_cost));
  const int64_t num_tasks = (num_items + per_task - 1) / per_task;
  ThreadPool::Current().ParallelFor(num_tasks, [&](int64_t task) {
    const int64_t begin = task * per_task;
    fn(begin, std::min(num_items, begin + per_task));
  });
}

}  // namespace

void RmsNorm(const bf16* x, int64_t x_stride, int64_t num_rows, int64_t dim, const bf16* w, float eps,
             bf16* y, int64_t y_stride) {
  if (dim <= 0) return;
  ParallelOverItems(num_rows, dim, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const bf16* xr = x + r * x_stride;
      bf16* yr = y + r * y_stride;
      // Fixed order: lane i sums x[j]^2 for j = i mod 16 ascending, then the Reduce16 tree.
      float lane[16] = {};
      int64_t j = 0;
      for (; j + 16 <= dim; j += 16) {
        for (int i = 0; i < 16; ++i) {
          const float v = BF16ToFloat(xr[j + i]);
          lane[i] += v * v;
        }
      }
      for (int i = 0; j + i < dim; ++i) {
        const float v = BF16ToFloat(xr[j + i]);
        lane[i] += v * v;
      }
      const float variance = internal::Reduce16(lane) / static_cast<float>(dim);
      const float inv = 1.0f / std::sqrt(variance + eps);
      // Two roundings (docs/numerics.md#rmsnorm): normalize, round to bf16, then multiply by the
      // weight and round.
      for (int64_t i = 0; i < dim; ++i) {
        const float normed = RoundBF16(BF16ToFloat(xr[i]) * inv);
        yr[i] = FloatToBF16(normed * BF16ToFloat(w[i]));
      }
    }
  });
}

void SiluMul(const bf16* gate, const bf16* up, int64_t n, bf16* out) {
  ParallelOverItems((n + 1023) / 1024, 1024, [&](int64_t c0, int64_t c1) {
    const int64_t end = std::min(n, c1 * 1024);
    for (int64_t i = c0 * 1024; i < end; ++i) {
      const float g = BF16ToFloat(gate[i]);
      const float silu = RoundBF16(g / (1.0f + std::exp(-g)));
      out[i] = FloatToBF16(silu * BF16ToFloat(up[i]));
    }
  });
}

void Add(const bf16* a, const bf16* b, int64_t n, bf16* out) {
  ParallelOverItems((n + 1023) / 1024, 1024, [&](int64_t c0, int64_t c1) {
    const int64_t end = std::min(n, c1 * 1024);
    for (int64_t i = c0 * 1024; i < end; ++i) {
      out[i] = FloatToBF16(BF16ToFloat(a[i]) + BF16ToFloat(b[i]));
    }
  });
}

void Embed(const bf16* table, int64_t hidden, const int32_t* ids, int64_t num_tokens, bf16* out) {
  if (hidden <= 0) return;
  ParallelOverItems(num_tokens, hidden, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      std::memcpy(out + t * hidden, table + static_cast<int64_t>(ids[t]) * hidden,
                  static_cast<size_t>(hidden) * sizeof(bf16));
    }
  });
}

void TopKSoftmax(const bf16* logits, int64_t num_rows, int64_t num_experts, int64_t k, bool norm_topk_prob,
                 int32_t* ids, float* weights) {
  if (k <= 0 || num_experts <= 0) return;
  const int64_t chosen = std::min(k, num_experts);
  ParallelOverItems(num_rows, num_experts * 8, [&](int64_t r0, int64_t r1) {
    std::vector<float> prob(static_cast<size_t>(num_experts));
    std::vector<int32_t> order(static_cast<size_t>(num_experts));
    for (int64_t r = r0; r < r1; ++r) {
      const bf16* row = logits + r * num_experts;
      float max_logit = -INFINITY;
      for (int64_t e = 0; e < num_experts; ++e) max_logit = std::max(max_logit, BF16ToFloat(row[e]));
      float sum = 0.0f;  // ascending expert order
      for (int64_t e = 0; e < num_experts; ++e) {
        prob[e] = std::exp(BF16ToFloat(row[e]) - max_logit);
        sum += prob[e];
      }
      for (int64_t e = 0; e < num_experts; ++e) prob[e] /= sum;
      std::iota(order.begin(), order.end(), 0);
      // Descending probability; ties go to the lower expert id (a total order, so the result
      // does not depend on the sort algorithm).
      // NaN (from NaN logits) ranks last so the comparator stays a strict weak order.
      auto key = [&](int32_t e) { return std::isnan(prob[e]) ? -INFINITY : prob[e]; };
      std::partial_sort(order.begin(), order.begin() + chosen, order.end(),
                        [&](int32_t a, int32_t b) { return key(a) > key(b) || (key(a) == key(b) && a < b); });
      float top_sum = 0.0f;  // in rank order
      for (int64_t i = 0; i < chosen; ++i) top_sum += prob[order[i]];
      int32_t* row_ids = ids + r * k;
      float* row_weights = weights + r * k;
      for (int64_t i = 0; i < chosen; ++i) {
        row_ids[i] = order[i];
        row_weights[i] = norm_topk_prob ? prob[order[i]] / top_sum : prob[order[i]];
      }
      for (int64_t i = chosen; i < k; ++i) {  // k > num_experts: nothing left to route to
        row_ids[i] = -1;
        row_weights[i] = 0.0f;
      }
    }
  });
}

}  // namespace moe::kernels::cpu
