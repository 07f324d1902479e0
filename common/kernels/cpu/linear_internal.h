// Internals of Linear shared by the portable, AVX-512 and AVX2 code paths (not a public interface).
//
// All paths compute every output element with the same, fixed reduction order, which is what
// makes Linear batch invariant and lets the portable path reproduce the AVX-512 path bit for bit
// (except that VDPBF16PS flushes bf16 subnormal inputs to zero, so bf16 weights/activations below
// 2^-126 in magnitude may round differently; such values do not occur in real checkpoints), and
// the AVX2 path likewise (its FMAs differ only for bf16 products below 2^-126; linear_avx2.cc):
//
// BF16 weights, output (m, n): 16 fp32 lanes start at +0. For each 32-element chunk c of k
//   (ascending; a partial last chunk is zero padded), lane i adds x*w for k = 32c+2i+1, then for
//   k = 32c+2i (the VDPBF16PS order; products of two bf16 values are exact in fp32, so each add
//   rounds once, exactly like the instruction). The lanes are then summed by the tree
//   Reduce16 below, and the sum is rounded to bf16 once.
// FP8 weights: per 128-wide k-block kb (ascending) 16 lanes start at +0. The block is walked in
//   64-element chunks c (ascending; k past the end contributes nothing), and each chunk in two
//   halves h = 0, 8; lane i adds a_q*w_q for k = j + 1, then for k = j, where
//   j = 128kb + 64c + 16*(i/4) + 2*(i%4) + h (the order in which VDPBF16PS consumes e4m3 values
//   widened to bf16 and interleaved by VPUNPCK{L,H}BW: the AVX-512 "dot" kernel runs it on
//   VDPBF16PS itself, the AVX-512 "fma" kernel and the AVX2 path reproduce it with FMAs; products
//   of e4m3 values are exact in fp32 and never subnormal, and every partial sum is a multiple of
//   2^-18, so each add rounds once and VDPBF16PS's flushing of subnormals never applies). Then
//   block = Reduce16(lanes); total = total + (block * s[m, kb]) * scale_inv[n/128, kb], starting
//   from total = +0; y = bf16(total), except that a NaN total is stored as the quiet NaN 0x7FC0
//   (Fp8OutputToBF16): which NaN an IEEE operation returns when both operands are NaNs depends on
//   their order, which the paths do not fix (the portable path leaves it to the compiler).
#ifndef MOE_COMMON_KERNELS_CPU_LINEAR_INTERNAL_H_
#define MOE_COMMON_KERNELS_CPU_LINEAR_INTERNAL_H_

#include <cstdint>

#include "common/tensor/bf16.h"

namespace moe::kernels::cpu::internal {

// Output columns per parallel task. Fixed (never derived from the batch size) and a divisor of
// 128 so that a task never straddles an FP8 scale row.
inline constexpr int64_t kLinearColumnsPerTask = 64;
// Rows per cache block inside a task.
inline constexpr int64_t kLinearRowBlock = 64;

// The fixed 16-lane summation tree: pairs (i, i+8), then (i, i+4), (i, i+2), (0, 1).
inline float Reduce16(const float* lane) {
  float s8[8], s4[4], s2[2];
  for (int i = 0; i < 8; ++i) s8[i] = lane[i] + lane[i + 8];
  for (int i = 0; i < 4; ++i) s4[i] = s8[i] + s8[i + 4];
  for (int i = 0; i < 2; ++i) s2[i] = s4[i] + s4[i + 2];
  return s2[0] + s2[1];
}

// The bf16 output of an FP8 Linear: bf16(total), with every NaN as 0x7FC0 (see above).
inline bf16 Fp8OutputToBF16(float total) {
  return total != total ? bf16{0x7fc0} : FloatToBF16(total);
}

// Rounds v (already clamped to [-448, 448]) to the nearest e4m3 value, ties to even; returns the
// value as float. Equal to Fp8E4M3ToFloat(FloatToFp8E4M3(v)) for such v, but a few instructions.
float RoundToE4M3(float v);

// Quantizes one activation row per 128-column group (docs/numerics.md#activation-quantization):
// s = max(max|x_g|, 1e-10) / 448, a_q = e4m3(clamp(x / s, -448, 448)). Writes the e4m3 values as
// floats to aq[0, num_groups*128) (zero padded past k) and s to scale[0, num_groups).
void QuantizeRowFp8(const bf16* x, int64_t k, float* aq, float* scale);

// Position of k-offset `i` (0..63) of a 64-element chunk in the packed activation layout the
// AVX-512 FP8 kernel reads: four runs of 16 lanes, holding for lane l = 0..15 the offsets
// j + 1, j, j + 9, j + 8 with j = 16 * (l / 4) + 2 * (l % 4), i.e. the order above.
inline int64_t Fp8PackedPosition(int64_t i) {
  const int64_t lane = (i / 16) * 4 + (i % 8) / 2;
  const int64_t run = ((i & 8) ? 2 : 0) + ((i & 1) ? 0 : 1);
  return run * 16 + lane;
}

// Same values and scales as QuantizeRowFp8 (bit for bit), but in the packed layout:
// packed[64c + Fp8PackedPosition(i)] = a_q[64c + i], zero padded to num_groups*128. Requires the
// AVX-512 ISA (Fp8Avx512Supported).
void QuantizeRowFp8PackedAvx512(const bf16* x, int64_t k, float* packed, float* scale);

// The activation layout the AVX-512 dot kernel reads: e4m3 values as bf16 words (exact), per
// 64-element chunk two runs of 32 words, run h / 8 (h = 0, 8) holding in its 128-bit lane L the
// offsets 16L + h .. 16L + h + 7. Word pair i of a run is lane i's (k = j, k = j + 1) of the
// order above, as VDPBF16PS pairs them.
inline int64_t Fp8DotPosition(int64_t i) {
  return ((i & 8) ? 32 : 0) + (i / 16) * 8 + (i % 8);
}

// Same values and scales as QuantizeRowFp8 (bit for bit), as bf16 words in the dot layout:
// packed[64c + Fp8DotPosition(i)] = bf16(a_q[64c + i]), zero padded to num_groups*128. Requires
// the AVX-512 ISA (Fp8Avx512Supported).
void QuantizeRowFp8DotAvx512(const bf16* x, int64_t k, uint16_t* packed, float* scale);

// One task of Linear: columns [n0, n1) for all num_rows rows.
struct Bf16Task {
  const bf16* x;
  int64_t x_stride;
  int64_t num_rows;
  const bf16* w;  // [N, k]
  int64_t k;
  bf16* y;
  int64_t y_stride;
};
struct Fp8Task {
  // Quantized activations, zero padded to aq_stride = num_k_blocks * 128 elements per row: the
  // portable path reads aq (natural order), the AVX-512 fma kernel and the AVX2 path aq_packed
  // (each its own packed layout), the AVX-512 dot kernel aq_dot (bf16 words, Fp8DotPosition).
  const float* aq;
  const float* aq_packed;
  const uint16_t* aq_dot;
  int64_t aq_stride;
  const float* a_scale;  // [num_rows, num_k_blocks]
  int64_t num_rows;
  const uint8_t* w;          // [N, k] e4m3 codes
  const float* w_scale_inv;  // [ceil(N/128), num_k_blocks]
  int64_t k;
  int64_t num_k_blocks;
  bf16* y;
  int64_t y_stride;
};

void LinearBf16TaskPortable(const Bf16Task& t, int64_t n0, int64_t n1);
void LinearFp8TaskPortable(const Fp8Task& t, int64_t n0, int64_t n1);
void LinearBf16TaskAvx512(const Bf16Task& t, int64_t n0, int64_t n1);
// AVX2 + FMA path (linear_avx2.cc). Its FP8 task reads aq_packed in its own layout, written by
// QuantizeRowFp8PackedAvx2 (same values and scales as QuantizeRowFp8).
void LinearBf16TaskAvx2(const Bf16Task& t, int64_t n0, int64_t n1);
void LinearFp8TaskAvx2(const Fp8Task& t, int64_t n0, int64_t n1);
void QuantizeRowFp8PackedAvx2(const bf16* x, int64_t k, float* packed, float* scale);
bool Avx2FmaSupported();
// The two AVX-512 FP8 kernels (linear_fp8_avx512.cc): "fma" reads aq_packed, "dot" aq_dot.
void LinearFp8TaskAvx512(const Fp8Task& t, int64_t n0, int64_t n1);
void LinearFp8TaskAvx512Dot(const Fp8Task& t, int64_t n0, int64_t n1);
// Whether the CPU runs the AVX-512 FP8 path (it also needs VBMI, which e.g. Cooper Lake lacks;
// there FP8 weights take the portable path, which gives the same results).
bool Fp8Avx512Supported();

// Which AVX-512 FP8 kernel Linear runs when the AVX-512 ISA is active and Fp8Avx512Supported():
// kDot (VDPBF16PS on weights widened once per row block; the default) or kFma (fp32 FMAs on
// weights widened per row tile; tuned on a Xeon where a 512-bit VDPBF16PS cost four FMAs).
// Both give the same bits. The environment variable MOE_KERNEL_FP8=fma selects kFma; decided
// once, on first use.
enum class Fp8Kernel { kDot, kFma };
Fp8Kernel ActiveFp8Kernel();
const char* Fp8KernelName(Fp8Kernel kernel);
// Tests and benchmarks only: switch the kernel. Not thread safe against running kernels.
void SetFp8KernelForTesting(Fp8Kernel kernel);

}  // namespace moe::kernels::cpu::internal

#endif  // MOE_COMMON_KERNELS_CPU_LINEAR_INTERNAL_H_
