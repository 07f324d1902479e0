// CPU kernels for the Qwen3(-MoE) forward pass. Numerics follow docs/numerics.md (forward pass and
// FP8 format): bf16 storage, fp32 accumulation, roundings where transformers rounds.
//
// Batch invariance (docs/numerics.md#batch-and-topology-invariance): every kernel computes row m of
// its output from row m of its inputs with a reduction order that does not depend on the number of
// rows, the thread count or the row's position in the batch. Results are bit-identical for a row
// alone or in any batch.
//
// Threading: kernels split work over the process-wide pool (ThreadPool::Global()), all cores.
// AVX-512 (F/BW/VL/BF16; VBMI too for fp8) paths are chosen at run time; a portable path computes the same
// function (possibly with different rounding; one process always uses one path).
#ifndef MOE_COMMON_KERNELS_CPU_KERNELS_H_
#define MOE_COMMON_KERNELS_CPU_KERNELS_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/tensor/bf16.h"
#include "common/tensor/linear_weight.h"

namespace moe::kernels::cpu {

// y[m, n] = bf16( sum_k x[m, k] * W[n, k] ) for m < num_rows, n < w.out_features.
//   x: [num_rows, w.in_features] bf16 with row stride x_stride (elements);
//   y: [num_rows, w.out_features] bf16 with row stride y_stride.
// BF16 weights: fp32 accumulation over k. FP8 weights: transformers' FP8Linear
// (docs/numerics.md#block-scaled-linear): each row of x is quantized per 128-column group to e4m3
// with s = max(|x_g|, 1e-10)/448, then
// C = sum over k-blocks kb (ascending) of (sum_{k in kb} a_q*w_q) * s[m, kb] * scale_inv[n/128, kb],
// all fp32, rounded to bf16 once.
void Linear(const bf16* x, int64_t x_stride, int64_t num_rows, const LinearWeight& w, bf16* y,
            int64_t y_stride);
inline void Linear(const bf16* x, int64_t num_rows, const LinearWeight& w, bf16* y) {
  Linear(x, w.in_features, num_rows, w, y, w.out_features);
}

// One product of LinearGrouped: y = x W^T with the shapes and strides of Linear. w must be
// non-null and outlive the call.
struct LinearCall {
  const bf16* x = nullptr;
  int64_t x_stride = 0;
  int64_t num_rows = 0;
  const LinearWeight* w = nullptr;
  bf16* y = nullptr;
  int64_t y_stride = 0;
};
// Runs every call as Linear would (bit-identical outputs), but as one parallel loop over all
// (call, column chunk) tasks, so many small products (the experts of a MoE round) pay for one
// fork/join instead of one each. Outputs must not overlap each other or any input; FP8 calls
// that directly follow one another on the same x (pointer, stride, rows, in_features) share one
// activation quantization.
void LinearGrouped(std::span<const LinearCall> calls);

// RMSNorm (docs/numerics.md#rmsnorm): y = bf16( bf16(x * rsqrt(mean(x^2) + eps)) * w ), stats in fp32.
// x, y: [num_rows, dim] with the given row strides (may alias: in-place allowed). w: [dim].
void RmsNorm(const bf16* x, int64_t x_stride, int64_t num_rows, int64_t dim, const bf16* w, float eps,
             bf16* y, int64_t y_stride);

// RoPE tables for positions [0, max_positions): cos/sin already rounded to bf16, including YaRN's
// inv_freq and attention_scaling when configured (docs/numerics.md#rope-and-yarn).
struct RopeTable {
  int64_t head_dim = 0;
  int64_t max_positions = 0;
  std::vector<bf16> cos;  // [max_positions, head_dim / 2]
  std::vector<bf16> sin;  // [max_positions, head_dim / 2]
};
// inv_freq[i] = 1 / base^(2i/D) in fp32; yarn: see transformers _compute_yarn_parameters.
struct RopeParams {
  double theta = 10000.0;
  std::string type = "default";  // "default" or "yarn"
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0, beta_slow = 1.0;
  double attention_factor = 0.0;  // 0: derive (0.1*ln(factor)+1 for yarn, 1 for default)
  bool truncate = true;
};
RopeTable BuildRopeTable(const RopeParams& params, int64_t head_dim, int64_t max_positions);
// In place, NeoX rotate_half with the three bf16 roundings of docs/numerics.md#rope-and-yarn.
// x: [num_tokens, num_heads, head_dim] with row stride x_stride between tokens (elements).
void ApplyRope(bf16* x, int64_t x_stride, int64_t num_tokens, int64_t num_heads, const int64_t* positions,
               const RopeTable& table);

// out = bf16( bf16(silu(gate)) * up ), silu in fp32 (docs/numerics.md#experts). gate, up, out: [n].
void SiluMul(const bf16* gate, const bf16* up, int64_t n, bf16* out);

// MoE router (docs/numerics.md#moe-gate): for each row, softmax over num_experts fp32 (from bf16
// logits), top-k in descending probability (ties: lower expert id first), then, if norm_topk_prob,
// divide by their sum (fp32). ids: [num_rows, k] int32, weights: [num_rows, k] float.
void TopKSoftmax(const bf16* logits, int64_t num_rows, int64_t num_experts, int64_t k, bool norm_topk_prob,
                 int32_t* ids, float* weights);

// One layer's paged KV cache: k and v are [num_blocks, block_size, num_kv_heads, head_dim] bf16.
struct PagedKv {
  bf16* k = nullptr;
  bf16* v = nullptr;
  int64_t block_size = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
};
// Writes k, v rows ([num_tokens, Hkv*D] with row strides) for positions start_pos.. into the cache
// slots given by block_table (block_table[p / block_size], slot p % block_size).
void WriteKv(const bf16* k, int64_t k_stride, const bf16* v, int64_t v_stride, int64_t num_tokens,
             int64_t start_pos, const int32_t* block_table, const PagedKv& kv);
// Causal attention of num_tokens queries at positions start_pos.. against cached keys 0..pos
// (inclusive) of one sequence. q: [num_tokens, num_heads, head_dim] with row stride q_stride;
// out: [num_tokens, num_heads * head_dim] with row stride out_stride. Query head h uses kv head
// h / (num_heads / num_kv_heads). Per query: s_j = fp32 dot(q, k_j) * scale; p = softmax(s) in
// fp32 over all j <= pos in one pass (so the result does not depend on chunking), its exp the
// faithfully rounded SoftmaxExp of attention_internal.h (not std::exp); P rounded to
// bf16; o = sum_j bf16(p_j) * v_j in fp32 ascending j; output rounded to bf16.
void PagedAttention(const bf16* q, int64_t q_stride, int64_t num_tokens, int64_t start_pos, int64_t num_heads,
                    float scale, const int32_t* block_table, const PagedKv& kv, bf16* out,
                    int64_t out_stride);

// out[i] = bf16(a[i] + b[i]) (residual add in fp32, one rounding). May alias.
void Add(const bf16* a, const bf16* b, int64_t n, bf16* out);

// Embedding row gather: out[t, :] = table[ids[t], :]. Callers validate ids < vocab.
void Embed(const bf16* table, int64_t hidden, const int32_t* ids, int64_t num_tokens, bf16* out);

// Reports which instruction set the kernels use ("avx512bf16", "avx2fma", "portable").
const char* KernelIsa();

}  // namespace moe::kernels::cpu

#endif  // MOE_COMMON_KERNELS_CPU_KERNELS_H_
