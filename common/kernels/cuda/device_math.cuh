// Internal to moe_kernels_cuda: bf16 conversions bit-identical to common/tensor/bf16.h, and the
// fixed-order reductions the kernels share.
#ifndef MOE_COMMON_KERNELS_CUDA_DEVICE_MATH_CUH_
#define MOE_COMMON_KERNELS_CUDA_DEVICE_MATH_CUH_

#include <cstdint>

namespace moe::kernels::cuda::internal {

__device__ __forceinline__ float Bf16ToFloat(uint16_t b) {
  return __uint_as_float(static_cast<uint32_t>(b) << 16);
}
// Round to nearest even; NaN stays a quiet NaN (as moe::FloatToBF16).
__device__ __forceinline__ uint16_t FloatToBf16(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
__device__ __forceinline__ float RoundBf16(float f) {
  return Bf16ToFloat(FloatToBf16(f));
}

// Butterfly sum / max over a warp: every lane gets the result, in an order fixed by the lane
// numbering (independent of the data and of the grid).
__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024): warp sums, then warp 0
// adds the per-warp sums in ascending warp order. Every thread gets the result. `smem` holds 32
// floats. Ends with a barrier, so smem may be reused right after.
__device__ __forceinline__ float BlockSum(float v, float* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, num_warps = blockDim.x >> 5;
  v = WarpSum(v);
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < num_warps; ++w) total += smem[w];
    smem[32 - 1] = total;
  }
  __syncthreads();
  const float total = smem[31];
  __syncthreads();
  return total;
}
__device__ __forceinline__ float BlockMax(float v, float* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, num_warps = blockDim.x >> 5;
  v = WarpMax(v);
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float m = smem[0];
    for (int w = 1; w < num_warps; ++w) m = fmaxf(m, smem[w]);
    smem[31] = m;
  }
  __syncthreads();
  const float m = smem[31];
  __syncthreads();
  return m;
}

}  // namespace moe::kernels::cuda::internal

#endif  // MOE_COMMON_KERNELS_CUDA_DEVICE_MATH_CUH_
