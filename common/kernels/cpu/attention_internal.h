// Internals of PagedAttention (not a public interface): its implementations, selectable so that
// tests can compare them bit for bit and kernels_bench can time them against each other.
#ifndef MOE_COMMON_KERNELS_CPU_ATTENTION_INTERNAL_H_
#define MOE_COMMON_KERNELS_CPU_ATTENTION_INTERNAL_H_

#include <cstdint>

#include "common/kernels/cpu/cpu_features.h"
#include "common/kernels/cpu/kernels.h"

namespace moe::kernels::cpu::internal {

// Every path computes each query row with exactly the operations, in the order, that kernels.h
// and docs/numerics.md#paged-attention document, so all give the same bits.
enum class AttentionPath {
  kAuto,       // what PagedAttention runs: kTiled unless the portable ISA is active, then kScalar
  kScalar,     // one task per (token, query head), plain C++
  kPerToken,   // AVX2, one task per (token, KV group): the group's query heads share each K/V load
  kTiled,      // AVX2, one task per (KV group, tile of tokens): K/V blocks widened once per tile;
               // with the AVX-512 BF16 ISA and head_dim % 32 == 0, QK^T and P·V on VDPBF16PS
  kTiledFp32,  // kTiled without VDPBF16PS (fp32 QK^T and P·V throughout), to compare against
};

// PagedAttention through `path`. The AVX2 paths need head_dim % 16 == 0 and an AVX2 CPU; without
// them they run kScalar.
void PagedAttentionWithPath(AttentionPath path, const bf16* q, int64_t q_stride, int64_t num_tokens,
                            int64_t start_pos, int64_t num_heads, float scale, const int32_t* block_table,
                            const PagedKv& kv, bf16* out, int64_t out_stride);

// The exponential of the attention softmax (docs/numerics.md#paged-attention), for every path.
// n = nearest integer to x·log2(e) (ties to even, by adding and subtracting 1.5·2^23), r = (x − n·ln2_hi)
// − n·ln2_lo (ln2_hi has 16 significant bits, so n·ln2_hi and the first subtraction are exact),
// e^r ≈ 1 + (r + r²·q(r)) with q of degree 4 (Horner), times 2^n built from n's bits; every
// multiply and add rounds separately (no fused multiply-add). Faithful (under 1 ulp from the exact
// value, so at most 1 ulp from std::exp) for x in [-87.33654, 88]; exactly 1 at ±0; 0 below
// -87.33654 (where exp(x) is below FLT_MIN: subnormal results flush to 0), at -inf too; NaN stays
// NaN. Above 88 undefined (the softmax passes s − max ≤ 0).
float SoftmaxExp(float x);

// x[j] = SoftmaxExp(x[j] - shift) for j in [0, n): 16 lanes at a time with kAvx512Bf16 (AVX-512),
// 8 with kAvx2Fma (AVX2), one with kPortable; the lanes compute SoftmaxExp's operations in its
// order, so every isa gives the same bits. The CPU must support `isa`.
void SoftmaxExpRow(Isa isa, float* x, int64_t n, float shift);

}  // namespace moe::kernels::cpu::internal

#endif  // MOE_COMMON_KERNELS_CPU_ATTENTION_INTERNAL_H_
