// Paged KV cache writes and causal paged attention (docs/numerics.md#paged-attention, the fp32
// path: fp32 QK^T and softmax, P rounded to bf16, fp32 P·V, bf16 output).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/kernels/cpu/kernels.h"
#include "common/kernels/cpu/linear_internal.h"
#include "common/kernels/cpu/thread_pool.h"

namespace moe::kernels::cpu {
namespace {

// The inner loops are cloned for AVX-512 and baseline x86-64 and picked by the loader. Both
// clones perform the same fp32 operations in the same order (independent lanes, no contraction:
// the library builds with -ffp-contract=off), so they give identical results. Not under
// ThreadSanitizer: the loader runs the clone resolver before TSan's runtime is up, and the
// instrumented resolver crashes.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define MOE_CLONES __attribute__((target_clones("avx512f", "default")))
#else
#define MOE_CLONES
#endif

// Fixed order: lane i sums q[d]*k[d] for d = i mod 16 ascending, then Reduce16.
MOE_CLONES float DotQK(const float* q, const bf16* k, int64_t dim) {
  float lane[16] = {};
  int64_t d = 0;
  for (; d + 16 <= dim; d += 16) {
    for (int i = 0; i < 16; ++i) lane[i] += q[d + i] * BF16ToFloat(k[d + i]);
  }
  for (int i = 0; d + i < dim; ++i) lane[i] += q[d + i] * BF16ToFloat(k[d + i]);
  return internal::Reduce16(lane);
}

MOE_CLONES void AccumulatePV(float p, const bf16* v, int64_t dim, float* out) {
  for (int64_t d = 0; d < dim; ++d) out[d] += p * BF16ToFloat(v[d]);
}

struct AttentionScratch {
  std::vector<float> scores;
  std::vector<float> q;
  std::vector<float> out;
};

AttentionScratch& Scratch() {
  thread_local AttentionScratch scratch;
  return scratch;
}

}  // namespace

void WriteKv(const bf16* k, int64_t k_stride, const bf16* v, int64_t v_stride, int64_t num_tokens,
             int64_t start_pos, const int32_t* block_table, const PagedKv& kv) {
  const int64_t row = kv.num_kv_heads * kv.head_dim;
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int64_t pos = start_pos + t;
    const int64_t slot =
        static_cast<int64_t>(block_table[pos / kv.block_size]) * kv.block_size + pos % kv.block_size;
    std::memcpy(kv.k + slot * row, k + t * k_stride, static_cast<size_t>(row) * sizeof(bf16));
    std::memcpy(kv.v + slot * row, v + t * v_stride, static_cast<size_t>(row) * sizeof(bf16));
  }
}

void PagedAttention(const bf16* q, int64_t q_stride, int64_t num_tokens, int64_t start_pos, int64_t num_heads,
                    float scale, const int32_t* block_table, const PagedKv& kv, bf16* out,
                    int64_t out_stride) {
  if (num_tokens <= 0 || num_heads <= 0 || kv.num_kv_heads <= 0) return;
  const int64_t dim = kv.head_dim;
  const int64_t group = std::max<int64_t>(1, num_heads / kv.num_kv_heads);
  const int64_t kv_row = kv.num_kv_heads * dim;
  // One task per (token, head): each owns one output vector, so the thread count cannot change it.
  ThreadPool::Current().ParallelFor(num_tokens * num_heads, [&](int64_t task) {
    const int64_t t = task / num_heads, h = task % num_heads;
    const int64_t g = h / group;
    const int64_t context = start_pos + t + 1;
    AttentionScratch& s = Scratch();
    if (s.scores.size() < static_cast<size_t>(context)) s.scores.resize(context);
    s.q.resize(dim);
    s.out.assign(dim, 0.0f);
    const bf16* qh = q + t * q_stride + h * dim;
    for (int64_t d = 0; d < dim; ++d) s.q[d] = BF16ToFloat(qh[d]);

    float max_score = -INFINITY;
    for (int64_t j = 0; j < context; ++j) {
      const int64_t slot =
          static_cast<int64_t>(block_table[j / kv.block_size]) * kv.block_size + j % kv.block_size;
      const float score = DotQK(s.q.data(), kv.k + slot * kv_row + g * dim, dim) * scale;
      s.scores[j] = score;
      max_score = std::max(max_score, score);
    }
    float sum = 0.0f;  // ascending j
    for (int64_t j = 0; j < context; ++j) {
      s.scores[j] = std::exp(s.scores[j] - max_score);
      sum += s.scores[j];
    }
    for (int64_t j = 0; j < context; ++j) {
      const float p = RoundBF16(s.scores[j] / sum);
      const int64_t slot =
          static_cast<int64_t>(block_table[j / kv.block_size]) * kv.block_size + j % kv.block_size;
      AccumulatePV(p, kv.v + slot * kv_row + g * dim, dim, s.out.data());
    }
    bf16* o = out + t * out_stride + h * dim;
    for (int64_t d = 0; d < dim; ++d) o[d] = FloatToBF16(s.out[d]);
  });
}

}  // namespace moe::kernels::cpu
