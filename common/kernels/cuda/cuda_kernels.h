// CUDA kernels for the Qwen3(-MoE) forward pass, on device memory: the same operations as the CPU
// reference kernels (common/kernels/cpu/kernels.h) with the same arguments, except that every
// pointer is a device pointer, work is queued on `stream`, and each call returns an absl::Status
// (bad arguments: INVALID_ARGUMENT naming the argument, checked before anything is launched; CUDA
// failures: the CUDA error's name and string). Nothing here aborts. This header compiles without
// nvcc and without the CUDA headers.
//
// Numerics (docs/gpu.md#numerics): the roundings to bf16 are those of docs/numerics.md, at the same
// places as the CPU kernels. What may differ from the CPU is the order of fp32 accumulations (dot
// products, sums of squares, softmax sums) and the last bits of expf/sqrtf, so results are within
// an ulp or two of bf16 of the CPU's, not bit-identical. Each kernel still computes row m from row
// m alone, in an order that does not depend on the number of rows (batch invariance on the GPU).
#ifndef MOE_COMMON_KERNELS_CUDA_CUDA_KERNELS_H_
#define MOE_COMMON_KERNELS_CUDA_CUDA_KERNELS_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/tensor/bf16.h"
#include "common/tensor/dtype.h"

namespace moe::kernels::cuda {

// A cudaStream_t, opaque here so that callers need no CUDA headers. nullptr is the legacy default
// stream.
using Stream = void*;

// ---- Devices and memory ----------------------------------------------------------------------

// Number of CUDA devices. No driver or no device is FAILED_PRECONDITION with CUDA's reason.
absl::StatusOr<int> DeviceCount();
// OK when device `ordinal` exists and can be used; otherwise FAILED_PRECONDITION naming
// "cuda:<ordinal>" and why (no driver, no device, only N devices). `flag` prefixes the message.
absl::Status CheckDevice(int ordinal, absl::string_view flag = "--device");
// CheckDevice, then makes it the calling thread's current device.
absl::Status SetDevice(int ordinal);
// "NVIDIA H200 (sm_90, 139.8 GiB)" or the error.
absl::StatusOr<std::string> DeviceDescription(int ordinal);
// Free and total memory of the current device, bytes.
absl::Status MemoryInfo(size_t* free_bytes, size_t* total_bytes);

absl::StatusOr<Stream> CreateStream();
absl::Status DestroyStream(Stream stream);
absl::Status Synchronize(Stream stream);

// Device allocations. An allocation larger than free memory is RESOURCE_EXHAUSTED naming `what`.
absl::StatusOr<void*> Malloc(size_t bytes, absl::string_view what);
void Free(void* ptr);  // nullptr is fine; errors are ignored (as in destructors)
// Stream-ordered copies (host memory need not be pinned; pageable copies are synchronous).
absl::Status CopyToDevice(void* dst, const void* src, size_t bytes, Stream stream);
absl::Status CopyToHost(void* dst, const void* src, size_t bytes, Stream stream);
absl::Status CopyDeviceToDevice(void* dst, const void* src, size_t bytes, Stream stream);

// ---- Elementwise and normalisation (elementwise.cu) --------------------------------------------

// RMSNorm with the CPU's two roundings: y = bf16( bf16(x * inv) * w ), inv = 1/sqrt(mean(x^2)+eps).
// x, y: [num_rows, dim] with row strides (may alias). w: [dim].
absl::Status RmsNorm(const bf16* x, int64_t x_stride, int64_t num_rows, int64_t dim, const bf16* w, float eps,
                     bf16* y, int64_t y_stride, Stream stream);
// QK-norm: RMSNorm of every head of x in place. x: [num_tokens, num_heads, head_dim] with token row
// stride x_stride (heads contiguous within a row); w: [head_dim], shared by all heads.
absl::Status HeadRmsNorm(bf16* x, int64_t x_stride, int64_t num_tokens, int64_t num_heads, int64_t head_dim,
                         const bf16* w, float eps, Stream stream);

// A RoPE table in device memory: the CPU's kernels::cpu::RopeTable (built once on the host by
// BuildRopeTable, YaRN included) uploaded as is. cos, sin: [max_positions, head_dim / 2] bf16.
struct DeviceRopeTable {
  const bf16* cos = nullptr;
  const bf16* sin = nullptr;
  int64_t head_dim = 0;
  int64_t max_positions = 0;
};
// In place, NeoX rotate_half with the CPU's three roundings. x: [num_tokens, num_heads, head_dim]
// with token row stride x_stride. positions: device [num_tokens]; a position outside
// [0, max_positions) leaves its token unchanged (callers validate, as on the CPU).
absl::Status ApplyRope(bf16* x, int64_t x_stride, int64_t num_tokens, int64_t num_heads,
                       const int64_t* positions, const DeviceRopeTable& table, Stream stream);

// out = bf16(a + b) in fp32 (may alias).
absl::Status Add(const bf16* a, const bf16* b, int64_t n, bf16* out, Stream stream);
// out = bf16( bf16(silu(gate)) * up ), silu in fp32.
absl::Status SiluMul(const bf16* gate, const bf16* up, int64_t n, bf16* out, Stream stream);
// The MoE router: per row, fp32 softmax over num_experts, top k by probability (ties: lower id;
// NaN ranks last), then divided by their sum when norm_topk_prob. ids: [num_rows, k] int32,
// weights: [num_rows, k] fp32; k > num_experts pads with id -1, weight 0. num_experts <= 1024.
absl::Status TopKSoftmax(const bf16* logits, int64_t num_rows, int64_t num_experts, int64_t k,
                         bool norm_topk_prob, int32_t* ids, float* weights, Stream stream);
// out[t, :] = table[ids[t], :]. ids outside [0, vocab) give a zero row (callers validate).
absl::Status Embed(const bf16* table, int64_t vocab, int64_t hidden, const int32_t* ids, int64_t num_tokens,
                   bf16* out, Stream stream);

// Per-token FP8 activation quantization (docs/numerics.md#activation-quantization): for row m and
// 128-column group g, s = max(max|x|, 1e-10) / 448 and q = e4m3(clamp(x / s, ±448)) (round to
// nearest even, saturating). x: [num_rows, k] with row stride x_stride; q: [num_rows, k] e4m3 codes
// with row stride q_stride; scale[g * scale_ld + m] (group-major, the layout cuBLASLt's
// VEC128_32F mode reads for the activation operand; scale_ld >= num_rows).
absl::Status QuantizeFp8PerToken(const bf16* x, int64_t x_stride, int64_t num_rows, int64_t k, uint8_t* q,
                                 int64_t q_stride, float* scale, int64_t scale_ld, Stream stream);

// ---- Attention (attention.cu) ----------------------------------------------------------------

// One layer's paged KV cache in device memory, the CPU KvCache layout: k and v are
// [num_blocks, block_size, num_kv_heads, head_dim] bf16.
struct DevicePagedKv {
  bf16* k = nullptr;
  bf16* v = nullptr;
  int64_t num_blocks = 0;
  int64_t block_size = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
};
// Writes k, v rows ([num_tokens, Hkv*D] with row strides) for positions start_pos.. into the slots
// of block_table (device int32, entry p / block_size; slot p % block_size). Entries outside
// [0, num_blocks) are skipped (callers validate).
absl::Status WriteKv(const bf16* k, int64_t k_stride, const bf16* v, int64_t v_stride, int64_t num_tokens,
                     int64_t start_pos, const int32_t* block_table, const DevicePagedKv& kv, Stream stream);
// Causal attention of one sequence's num_tokens queries at positions start_pos.. against its
// cached keys 0..pos, the CPU PagedAttention's math: s_j = (q . k_j) * scale in fp32; one softmax
// over all j <= pos in fp32 (the result does not depend on chunking); P rounded to bf16;
// o = sum_j bf16(P_j) v_j in fp32; o rounded to bf16. Query head h reads kv head
// h / (num_heads / num_kv_heads). Decode (num_tokens = 1) and prefill use the same kernels:
// scores are computed split over KV blocks (flash-decoding's split-K), the softmax statistics are
// combined across splits in a fixed order, each split accumulates P.V for its positions, and the
// splits are summed in ascending order. Scratch (at most 256 MiB: long
// prefills run in chunks of queries, with the same results) comes from the stream-ordered allocator.
absl::Status PagedAttention(const bf16* q, int64_t q_stride, int64_t num_tokens, int64_t start_pos,
                            int64_t num_heads, float scale, const int32_t* block_table,
                            int64_t block_table_len, const DevicePagedKv& kv, bf16* out, int64_t out_stride,
                            Stream stream);

// Many sequences' queries in one launch (a step's decode batch, or several prefill chunks): query
// row t of q (num_tokens rows, q_stride) is at position token_pos[t] of segment token_segment[t],
// whose block table is block_tables[token_segment[t] * table_stride ...] (table_stride entries).
// max_len: one more than the largest position (known to the host that built the batch); a row
// whose position is outside [0, max_len) gets a zero output. token_segment, token_pos and
// block_tables are device int32 arrays. Each row's result is bit-identical to PagedAttention's
// for its sequence.
absl::Status PagedAttentionBatch(const bf16* q, int64_t q_stride, int64_t num_tokens, int64_t num_heads,
                                 float scale, const int32_t* token_segment, const int32_t* token_pos,
                                 int64_t max_len, const int32_t* block_tables, int64_t table_stride,
                                 const DevicePagedKv& kv, bf16* out, int64_t out_stride, Stream stream);

// ---- Linear layers (blas.cc, cuBLASLt) --------------------------------------------------------

// A linear layer's weight in device memory, y = x W^T with W [out_features, in_features]:
//   kBF16: data is bf16 row-major;
//   kF8E4M3: data is e4m3fn codes row-major and scale the block scales in cuBLASLt's
//     BLK128x128_32F layout, made from the checkpoint's weight_scale_inv
//     [ceil(out/128), ceil(in/128)] by PackWeightScales (uploaded once; no dequantized copy).
struct DeviceLinearWeight {
  DType dtype = DType::kUnknown;
  int64_t out_features = 0;
  int64_t in_features = 0;
  const void* data = nullptr;
  const float* scale = nullptr;
};
// Leading dimension (in floats) of the packed scale tensors: the scale count along the outer
// dimension rounded up to a multiple of 4 (16 bytes, what cuBLASLt requires of scale tensors).
int64_t ScaleLeadingDim(int64_t outer);
// Number of floats PackWeightScales writes for a weight of out_features x in_features.
int64_t PackedWeightScaleCount(int64_t out_features, int64_t in_features);
// Host-side: weight_scale_inv [ceil(out/128), ceil(in/128)] row-major -> the packed layout
// packed[kb * ScaleLeadingDim(ceil(out/128)) + nb] (k-block-major; padding is zero).
void PackWeightScales(const float* scale_inv, int64_t out_features, int64_t in_features, float* packed);

// One product of Blas::LinearGrouped (Linear's arguments).
struct LinearCall {
  const bf16* x = nullptr;
  int64_t x_stride = 0;
  int64_t num_rows = 0;
  const DeviceLinearWeight* w = nullptr;
  bf16* y = nullptr;
  int64_t y_stride = 0;
};

// A cuBLASLt handle with its workspace, for one device. Not thread-safe: one per stream/thread.
class Blas {
 public:
  static absl::StatusOr<std::unique_ptr<Blas>> Create();
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  // y[m, n] = bf16( sum_k x[m, k] W[n, k] ), fp32 accumulation (cuBLASLt's order, not the CPU's).
  // FP8 weights: x is quantized per token (QuantizeFp8PerToken) and multiplied with the FP8 weight
  // by cuBLASLt with VEC128_32F scales on x and BLK128x128_32F scales on W (CUDA >= 12.9 / 13,
  // sm_90+): the block-scaled math of docs/numerics.md#block-scaled-linear. cuBLASLt requires
  // in_features % 16 == 0 and 16-byte aligned rows for FP8; other shapes are INVALID_ARGUMENT.
  absl::Status Linear(const bf16* x, int64_t x_stride, int64_t num_rows, const DeviceLinearWeight& w, bf16* y,
                      int64_t y_stride, Stream stream);
  // All products of one MoE round, each expert's rows as one product, queued back to back on one
  // stream; consecutive FP8 calls on the same x share one activation quantization (an expert's
  // gate and up). Not (yet) one grouped cuBLASLt launch: see docs/gpu.md.
  absl::Status LinearGrouped(std::span<const LinearCall> calls, Stream stream);

 private:
  Blas() = default;
  absl::Status Fp8(const uint8_t* q, const float* q_scale, int64_t q_scale_ld, int64_t num_rows,
                   const DeviceLinearWeight& w, bf16* y, int64_t y_stride, Stream stream);
  struct AlgoCache;  // cuBLASLt algorithms by shape (blas.cc)
  void* handle_ = nullptr;
  std::unique_ptr<AlgoCache> cache_;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
};

}  // namespace moe::kernels::cuda

#endif  // MOE_COMMON_KERNELS_CUDA_CUDA_KERNELS_H_
