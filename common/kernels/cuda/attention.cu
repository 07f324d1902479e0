// Paged KV cache writes and paged attention (cuda_kernels.h), split over KV blocks.
//
// PagedAttention runs three kernels over a scratch buffer:
//   1. scores: grid (split, head, query); each split covers kSplitBlocks cache blocks. A warp per
//      key computes s_j = (q . k_j) * scale (fp32, butterfly sum over lanes) into the scratch row
//      of the (query, head), then the block reduces the split's max m_s and sum l_s = sum exp(s_j - m_s).
//   2. pv: same grid; every block combines all splits' (m_s, l_s) in ascending split order into the
//      global max M and sum L, forms P_j = bf16(exp(s_j - M) / L) for its own positions (the CPU's
//      rounding of P, from the same global softmax) and accumulates o_s[d] = sum_j P_j v_j[d] in
//      ascending j (P in shared memory, one thread per d).
//   3. reduce: o[d] = bf16(sum_s o_s[d]) in ascending split order.
// Differences from the CPU reference: the dot products' and L's summation order, and expf's last
// bit (the CPU uses its own SoftmaxExp, docs/numerics.md#paged-attention); the P rounding and the ascending-j
// P.V sum within a split are the CPU's.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "common/kernels/cuda/cuda_kernels.h"
#include "common/kernels/cuda/cuda_status.h"
#include "common/kernels/cuda/device_math.cuh"

namespace moe::kernels::cuda {
namespace {

using internal::BadArg;
using internal::Bf16ToFloat;
using internal::CheckNonNegative;
using internal::CheckPositive;
using internal::CheckPtr;
using internal::CheckStride;
using internal::FloatToBf16;

constexpr int kThreads = 128;  // 4 warps
constexpr int kMaxHeadDim = 256;

struct AttnArgs {
  const uint16_t* q;
  int64_t q_stride;
  int64_t start_pos;
  int64_t num_heads;
  int64_t group;  // query heads per kv head
  float scale;
  const int32_t* block_table;
  int64_t block_table_len;
  const uint16_t* k_cache;
  const uint16_t* v_cache;
  int64_t num_blocks;
  int64_t block_size;
  int64_t num_kv_heads;
  int64_t head_dim;
  int64_t split_len;   // positions per split
  int64_t num_splits;  // per query
  int64_t max_len;     // scores row length: start_pos + num_tokens
  float* scores;       // [num_tokens, num_heads, max_len]
  float* stats;        // [num_tokens, num_heads, num_splits, 2]: (m_s, l_s)
  float* partial;      // [num_tokens, num_heads, num_splits, head_dim]
  // Batch mode (PagedAttentionBatch) when token_pos is set: query row t is at position
  // token_pos[token0 + t] of segment token_segment[token0 + t], whose block table starts at
  // block_table + segment * block_table_len. Otherwise one sequence: position start_pos + token0 + t.
  const int32_t* token_pos;
  const int32_t* token_segment;
  int64_t token0;  // first query row of the current chunk
};

// Position of the chunk's query row t; -1 when outside [0, max_len) (batch mode only).
__device__ __forceinline__ int64_t QueryPos(const AttnArgs& a, int64_t t) {
  if (a.token_pos == nullptr) return a.start_pos + a.token0 + t;
  const int64_t pos = a.token_pos[a.token0 + t];
  return pos >= 0 && pos < a.max_len ? pos : -1;
}
__device__ __forceinline__ const int32_t* QueryTable(const AttnArgs& a, int64_t t) {
  if (a.token_pos == nullptr) return a.block_table;
  return a.block_table + static_cast<int64_t>(a.token_segment[a.token0 + t]) * a.block_table_len;
}

// Offset of (position j, kv head) in the cache, or -1 when j's block is not a valid block.
__device__ __forceinline__ int64_t CacheOffset(const AttnArgs& a, const int32_t* table, int64_t j,
                                               int64_t kv_head) {
  const int64_t bi = j / a.block_size;
  if (bi >= a.block_table_len) return -1;
  const int64_t block = table[bi];
  if (block < 0 || block >= a.num_blocks) return -1;
  return ((block * a.block_size + j % a.block_size) * a.num_kv_heads + kv_head) * a.head_dim;
}

__global__ void ScoresKernel(AttnArgs a) {
  __shared__ float smem[32];
  const int64_t split = blockIdx.x, h = blockIdx.y, t = blockIdx.z;
  const int64_t pos = QueryPos(a, t);
  if (pos < 0) return;  // the whole block: no barrier is reached
  const int32_t* table = QueryTable(a, t);
  const int64_t begin = split * a.split_len;
  const int64_t end = min(begin + a.split_len, pos + 1);
  const int64_t kv_head = h / a.group;
  const uint16_t* q = a.q + t * a.q_stride + h * a.head_dim;
  float* scores = a.scores + (t * a.num_heads + h) * a.max_len;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, num_warps = blockDim.x >> 5;
  // Each lane holds up to kMaxHeadDim / 32 query elements.
  float qr[kMaxHeadDim / 32];
  const int per_lane = static_cast<int>((a.head_dim + 31) / 32);
  for (int i = 0; i < per_lane; ++i) {
    const int64_t d = lane + 32 * i;
    qr[i] = d < a.head_dim ? Bf16ToFloat(q[d]) : 0.0f;
  }
  for (int64_t j = begin + warp; j < end; j += num_warps) {
    const int64_t off = CacheOffset(a, table, j, kv_head);
    float acc = 0.0f;
    if (off >= 0) {
      for (int i = 0; i < per_lane; ++i) {
        const int64_t d = lane + 32 * i;
        if (d < a.head_dim) acc += qr[i] * Bf16ToFloat(a.k_cache[off + d]);
      }
    }
    acc = internal::WarpSum(acc);
    if (lane == 0) scores[j] = off >= 0 ? acc * a.scale : -INFINITY;
  }
  __syncthreads();
  float m = -INFINITY;
  for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) m = fmaxf(m, scores[j]);
  m = internal::BlockMax(m, smem);
  float l = 0.0f;
  if (m != -INFINITY) {
    for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) l += expf(scores[j] - m);
  }
  l = internal::BlockSum(l, smem);
  if (threadIdx.x == 0) {
    float* st = a.stats + ((t * a.num_heads + h) * a.num_splits + split) * 2;
    st[0] = m;
    st[1] = l;
  }
}

__global__ void PvKernel(AttnArgs a) {
  const int64_t split = blockIdx.x, h = blockIdx.y, t = blockIdx.z;
  const int64_t pos = QueryPos(a, t);
  if (pos < 0) return;  // the whole block: no barrier is reached
  const int32_t* table = QueryTable(a, t);
  const int64_t begin = split * a.split_len;
  const int64_t end = min(begin + a.split_len, pos + 1);
  const int64_t kv_head = h / a.group;
  const int64_t row = t * a.num_heads + h;
  const float* st = a.stats + row * a.num_splits * 2;
  // Global max and sum over the splits this query sees, ascending split order.
  const int64_t live_splits = pos / a.split_len + 1;
  float big_m = -INFINITY;
  for (int64_t s = 0; s < live_splits; ++s) big_m = fmaxf(big_m, st[2 * s]);
  float big_l = 0.0f;
  for (int64_t s = 0; s < live_splits; ++s) {
    if (st[2 * s] != -INFINITY) big_l += st[2 * s + 1] * expf(st[2 * s] - big_m);
  }
  const float* scores = a.scores + row * a.max_len;
  float* out = a.partial + (row * a.num_splits + split) * a.head_dim;
  // P_j of this split's positions, computed once and shared by the head_dim threads.
  extern __shared__ float p_split[];  // [split_len]
  for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
    p_split[j - begin] = internal::RoundBf16(expf(scores[j] - big_m) / big_l);
  }
  __syncthreads();
  for (int64_t d = threadIdx.x; d < a.head_dim; d += blockDim.x) {
    float acc = 0.0f;
    for (int64_t j = begin; j < end; ++j) {
      const int64_t off = CacheOffset(a, table, j, kv_head);
      if (off < 0) continue;
      acc += p_split[j - begin] * Bf16ToFloat(a.v_cache[off + d]);
    }
    out[d] = acc;
  }
}

__global__ void ReduceKernel(AttnArgs a, uint16_t* out, int64_t out_stride) {
  const int64_t h = blockIdx.x, t = blockIdx.y;
  const int64_t pos = QueryPos(a, t);
  const int64_t live_splits = pos < 0 ? 0 : pos / a.split_len + 1;  // invalid position: zero output
  const float* partial = a.partial + (t * a.num_heads + h) * a.num_splits * a.head_dim;
  for (int64_t d = threadIdx.x; d < a.head_dim; d += blockDim.x) {
    float o = 0.0f;
    for (int64_t s = 0; s < live_splits; ++s) o += partial[s * a.head_dim + d];
    out[t * out_stride + h * a.head_dim + d] = FloatToBf16(o);
  }
}

__global__ void WriteKvKernel(const uint16_t* k, int64_t k_stride, const uint16_t* v, int64_t v_stride,
                              int64_t start_pos, const int32_t* block_table, uint16_t* k_cache,
                              uint16_t* v_cache, int64_t num_blocks, int64_t block_size, int64_t row_width) {
  const int64_t t = blockIdx.x;
  const int64_t p = start_pos + t;
  const int64_t block = block_table[p / block_size];
  if (block < 0 || block >= num_blocks) return;
  const int64_t base = (block * block_size + p % block_size) * row_width;
  for (int64_t i = threadIdx.x; i < row_width; i += blockDim.x) {
    k_cache[base + i] = k[t * k_stride + i];
    v_cache[base + i] = v[t * v_stride + i];
  }
}

absl::Status CheckKv(absl::string_view fn, const DevicePagedKv& kv) {
  RETURN_IF_ERROR(CheckPtr(fn, "kv.k", kv.k));
  RETURN_IF_ERROR(CheckPtr(fn, "kv.v", kv.v));
  RETURN_IF_ERROR(CheckPositive(fn, "kv.num_blocks", kv.num_blocks));
  RETURN_IF_ERROR(CheckPositive(fn, "kv.block_size", kv.block_size));
  RETURN_IF_ERROR(CheckPositive(fn, "kv.num_kv_heads", kv.num_kv_heads));
  RETURN_IF_ERROR(CheckPositive(fn, "kv.head_dim", kv.head_dim));
  return absl::OkStatus();
}

// Checks shared by PagedAttention and PagedAttentionBatch.
absl::Status CheckAttention(absl::string_view fn, int64_t q_stride, int64_t num_tokens, int64_t num_heads,
                            const DevicePagedKv& kv, int64_t out_stride) {
  RETURN_IF_ERROR(CheckKv(fn, kv));
  RETURN_IF_ERROR(CheckNonNegative(fn, "num_tokens", num_tokens));
  RETURN_IF_ERROR(CheckPositive(fn, "num_heads", num_heads));
  if (num_heads % kv.num_kv_heads != 0) {
    return BadArg(
        fn, "num_heads",
        absl::StrCat("(", num_heads, ") is not a multiple of kv.num_kv_heads (", kv.num_kv_heads, ")"));
  }
  if (kv.head_dim > kMaxHeadDim) {
    return BadArg(fn, "kv.head_dim", absl::StrCat("must be <= ", kMaxHeadDim, ", got ", kv.head_dim));
  }
  if (kv.block_size > 8192)
    return BadArg(fn, "kv.block_size", absl::StrCat("must be <= 8192, got ", kv.block_size));
  if (num_heads > 65535) return BadArg(fn, "num_heads", "exceeds 65535");
  RETURN_IF_ERROR(CheckStride(fn, "q_stride", q_stride, num_heads * kv.head_dim));
  RETURN_IF_ERROR(CheckStride(fn, "out_stride", out_stride, num_heads * kv.head_dim));
  return absl::OkStatus();
}

// Fills in the shapes, allocates the scratch and launches the three kernels per chunk of queries.
// `a` carries the mode (single sequence or batch), the block table(s) and max_len.
absl::Status RunAttention(AttnArgs a, const bf16* q, int64_t q_stride, int64_t num_tokens, int64_t num_heads,
                          float scale, const DevicePagedKv& kv, bf16* out, int64_t out_stride,
                          Stream stream) {
  // A split is a whole number of cache blocks, about 256 positions.
  const int64_t blocks_per_split = std::max<int64_t>(1, 256 / kv.block_size);
  const int64_t split_len = blocks_per_split * kv.block_size;
  const int64_t num_splits = (a.max_len + split_len - 1) / split_len;
  // Queries are processed in chunks whose scratch (scores of every cached position, per-split
  // statistics and partial outputs) stays under kScratchBytes; each query's result does not depend
  // on the chunking.
  constexpr int64_t kScratchBytes = int64_t{256} << 20;
  const int64_t per_token_bytes =
      static_cast<int64_t>(sizeof(float)) * num_heads * (a.max_len + num_splits * (2 + kv.head_dim));
  const int64_t chunk =
      std::max<int64_t>(1, std::min<int64_t>({num_tokens, kScratchBytes / per_token_bytes, int64_t{65535}}));
  cudaStream_t s = internal::AsCuda(stream);
  void* scratch = nullptr;
  RETURN_IF_ERROR(internal::CudaStatus(cudaMallocAsync(&scratch, per_token_bytes * chunk, s),
                                       "cuda::PagedAttention: allocating scratch (cudaMallocAsync)"));
  a.q_stride = q_stride;
  a.num_heads = num_heads;
  a.group = num_heads / kv.num_kv_heads;
  a.scale = scale;
  a.k_cache = reinterpret_cast<const uint16_t*>(kv.k);
  a.v_cache = reinterpret_cast<const uint16_t*>(kv.v);
  a.num_blocks = kv.num_blocks;
  a.block_size = kv.block_size;
  a.num_kv_heads = kv.num_kv_heads;
  a.head_dim = kv.head_dim;
  a.split_len = split_len;
  a.num_splits = num_splits;
  a.scores = static_cast<float*>(scratch);
  a.stats = a.scores + chunk * num_heads * a.max_len;
  a.partial = a.stats + chunk * num_heads * num_splits * 2;
  absl::Status status;
  for (int64_t t0 = 0; t0 < num_tokens && status.ok(); t0 += chunk) {
    const int64_t n = std::min(chunk, num_tokens - t0);
    a.q = reinterpret_cast<const uint16_t*>(q) + t0 * q_stride;
    a.token0 = t0;
    const dim3 grid(static_cast<unsigned>(num_splits), static_cast<unsigned>(num_heads),
                    static_cast<unsigned>(n));
    // Splits past a query's position have nothing to do; their blocks finish at once (end <= begin).
    ScoresKernel<<<grid, kThreads, 0, s>>>(a);
    status.Update(internal::LaunchStatus("cuda::PagedAttention (scores)"));
    if (!status.ok()) break;
    PvKernel<<<grid, kThreads, split_len * sizeof(float), s>>>(a);
    status.Update(internal::LaunchStatus("cuda::PagedAttention (pv)"));
    if (!status.ok()) break;
    ReduceKernel<<<dim3(static_cast<unsigned>(num_heads), static_cast<unsigned>(n)), kThreads, 0, s>>>(
        a, reinterpret_cast<uint16_t*>(out) + t0 * out_stride, out_stride);
    status.Update(internal::LaunchStatus("cuda::PagedAttention (reduce)"));
  }
  const absl::Status freed =
      internal::CudaStatus(cudaFreeAsync(scratch, s), "cuda::PagedAttention: cudaFreeAsync");
  return status.ok() ? freed : status;
}

}  // namespace

absl::Status WriteKv(const bf16* k, int64_t k_stride, const bf16* v, int64_t v_stride, int64_t num_tokens,
                     int64_t start_pos, const int32_t* block_table, const DevicePagedKv& kv, Stream stream) {
  constexpr absl::string_view kFn = "cuda::WriteKv";
  RETURN_IF_ERROR(CheckKv(kFn, kv));
  RETURN_IF_ERROR(CheckNonNegative(kFn, "num_tokens", num_tokens));
  RETURN_IF_ERROR(CheckNonNegative(kFn, "start_pos", start_pos));
  const int64_t width = kv.num_kv_heads * kv.head_dim;
  RETURN_IF_ERROR(CheckStride(kFn, "k_stride", k_stride, width));
  RETURN_IF_ERROR(CheckStride(kFn, "v_stride", v_stride, width));
  if (num_tokens == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckPtr(kFn, "k", k));
  RETURN_IF_ERROR(CheckPtr(kFn, "v", v));
  RETURN_IF_ERROR(CheckPtr(kFn, "block_table", block_table));
  if (num_tokens > INT32_MAX) return BadArg(kFn, "num_tokens", "exceeds the grid limit");
  WriteKvKernel<<<static_cast<unsigned>(num_tokens), 128, 0, internal::AsCuda(stream)>>>(
      reinterpret_cast<const uint16_t*>(k), k_stride, reinterpret_cast<const uint16_t*>(v), v_stride,
      start_pos, block_table, reinterpret_cast<uint16_t*>(kv.k), reinterpret_cast<uint16_t*>(kv.v),
      kv.num_blocks, kv.block_size, width);
  return internal::LaunchStatus(kFn);
}

absl::Status PagedAttention(const bf16* q, int64_t q_stride, int64_t num_tokens, int64_t start_pos,
                            int64_t num_heads, float scale, const int32_t* block_table,
                            int64_t block_table_len, const DevicePagedKv& kv, bf16* out, int64_t out_stride,
                            Stream stream) {
  constexpr absl::string_view kFn = "cuda::PagedAttention";
  RETURN_IF_ERROR(CheckAttention(kFn, q_stride, num_tokens, num_heads, kv, out_stride));
  RETURN_IF_ERROR(CheckNonNegative(kFn, "start_pos", start_pos));
  const int64_t max_len = start_pos + num_tokens;
  const int64_t needed_blocks = (max_len + kv.block_size - 1) / kv.block_size;
  if (block_table_len < needed_blocks) {
    return BadArg(kFn, "block_table_len",
                  absl::StrCat("(", block_table_len, ") covers fewer than the ", needed_blocks,
                               " blocks positions 0..", max_len - 1, " need"));
  }
  if (num_tokens == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckPtr(kFn, "q", q));
  RETURN_IF_ERROR(CheckPtr(kFn, "out", out));
  RETURN_IF_ERROR(CheckPtr(kFn, "block_table", block_table));

  AttnArgs a{};
  a.start_pos = start_pos;
  a.block_table = block_table;
  a.block_table_len = block_table_len;
  a.max_len = max_len;
  return RunAttention(a, q, q_stride, num_tokens, num_heads, scale, kv, out, out_stride, stream);
}

absl::Status PagedAttentionBatch(const bf16* q, int64_t q_stride, int64_t num_tokens, int64_t num_heads,
                                 float scale, const int32_t* token_segment, const int32_t* token_pos,
                                 int64_t max_len, const int32_t* block_tables, int64_t table_stride,
                                 const DevicePagedKv& kv, bf16* out, int64_t out_stride, Stream stream) {
  constexpr absl::string_view kFn = "cuda::PagedAttentionBatch";
  RETURN_IF_ERROR(CheckAttention(kFn, q_stride, num_tokens, num_heads, kv, out_stride));
  RETURN_IF_ERROR(CheckPositive(kFn, "max_len", max_len));
  RETURN_IF_ERROR(CheckPositive(kFn, "table_stride", table_stride));
  if (num_tokens == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckPtr(kFn, "q", q));
  RETURN_IF_ERROR(CheckPtr(kFn, "out", out));
  RETURN_IF_ERROR(CheckPtr(kFn, "token_segment", token_segment));
  RETURN_IF_ERROR(CheckPtr(kFn, "token_pos", token_pos));
  RETURN_IF_ERROR(CheckPtr(kFn, "block_tables", block_tables));
  AttnArgs a{};
  a.block_table = block_tables;
  a.block_table_len = table_stride;
  a.max_len = max_len;
  a.token_pos = token_pos;
  a.token_segment = token_segment;
  return RunAttention(a, q, q_stride, num_tokens, num_heads, scale, kv, out, out_stride, stream);
}

}  // namespace moe::kernels::cuda
