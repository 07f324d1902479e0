// cuBLASLt wrappers: the BF16 and FP8 block-scaled linear layers (cuda_kernels.h).
//
// Layout: cuBLASLt is column-major. Our row-major y[M, N] = x[M, K] W[N, K]^T is, column-major,
// D[N, M] = op(A) B with A = W seen as [K, N] (lda = K, op = T) and B = x seen as [K, M]
// (ldb = x_stride, op = N): the "TN" form that FP8 matmuls require. cuBLASLt's m is our N (the
// weight's out_features) and its n our M (tokens).
//
// FP8 scales: A (the weight) takes CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F, one fp32 per
// 128x128 block; B (the activations) CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F, one fp32 per 128
// consecutive k of each token. Both scale tensors are stored k-block-major with the outer
// dimension contiguous and padded to a multiple of 4 (PackWeightScales, ScaleLeadingDim).
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <functional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/kernels/cuda/cuda_kernels.h"
#include "common/kernels/cuda/cuda_status.h"
#include "common/tensor/linear_weight.h"

namespace moe::kernels::cuda {
namespace {

using internal::BadArg;
using internal::CheckNonNegative;
using internal::CheckPositive;
using internal::CheckPtr;
using internal::CheckStride;

constexpr size_t kWorkspaceBytes = 32u << 20;  // cuBLASLt's recommendation for Hopper

absl::Status LtStatus(cublasStatus_t st, absl::string_view what) {
  if (st == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string message =
      absl::StrCat(what, ": ", cublasLtGetStatusName(st), ": ", cublasLtGetStatusString(st));
  switch (st) {
    case CUBLAS_STATUS_ALLOC_FAILED:
      return absl::ResourceExhaustedError(message);
    case CUBLAS_STATUS_NOT_SUPPORTED:
    case CUBLAS_STATUS_ARCH_MISMATCH:
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return absl::FailedPreconditionError(message);
    case CUBLAS_STATUS_INVALID_VALUE:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
}

#define MOE_LT_RETURN_IF_ERROR(expr, what) RETURN_IF_ERROR(LtStatus((expr), (what)))

// Owns the descriptors of one matmul.
struct MatmulDescs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~MatmulDescs() {
    if (pref != nullptr) cublasLtMatmulPreferenceDestroy(pref);
    if (d != nullptr) cublasLtMatrixLayoutDestroy(d);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (op != nullptr) cublasLtMatmulDescDestroy(op);
  }
};

absl::Status CheckWeight(absl::string_view fn, const DeviceLinearWeight& w) {
  RETURN_IF_ERROR(CheckPositive(fn, "w.out_features", w.out_features));
  RETURN_IF_ERROR(CheckPositive(fn, "w.in_features", w.in_features));
  RETURN_IF_ERROR(CheckPtr(fn, "w.data", w.data));
  if (w.dtype == DType::kBF16) return absl::OkStatus();
  if (w.dtype != DType::kF8E4M3) {
    return BadArg(fn, "w.dtype",
                  absl::StrCat("must be BF16 or F8_E4M3, got ", std::string(DTypeName(w.dtype))));
  }
  RETURN_IF_ERROR(CheckPtr(fn, "w.scale", w.scale));
  if (w.in_features % 16 != 0) {
    return BadArg(fn, "w.in_features",
                  absl::StrCat("(", w.in_features, ") must be a multiple of 16 for cuBLASLt's FP8 matmul"));
  }
  return absl::OkStatus();
}

// Largest power of two (<= 256) dividing the address: cuBLASLt's heuristics assume 256-byte
// aligned operands unless told otherwise, and an algorithm chosen for that alignment may fail on
// a less aligned pointer (an expert's rows inside a round's buffer).
uint32_t Alignment(const void* p) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && v % a != 0) a >>= 1;
  return a;
}

// What decides the algorithm: the shapes, the strides and the operands' alignments.
struct AlgoKey {
  bool fp8;
  int64_t m, n, k, ldb, ldd;
  uint32_t align_a, align_b, align_d;
  bool operator==(const AlgoKey&) const = default;
};
struct AlgoKeyHash {
  size_t operator()(const AlgoKey& key) const {
    size_t h = key.fp8;
    for (int64_t v : {key.m, key.n, key.k, key.ldb, key.ldd, int64_t{key.align_a}, int64_t{key.align_b},
                      int64_t{key.align_d}}) {
      h = h * 1000003u ^ std::hash<int64_t>()(v);
    }
    return h;
  }
};

// The heuristic's best algorithm for `key`, asked once per key and then cached (the query costs
// tens of microseconds, more than a decode-sized product).
absl::Status FindAlgo(cublasLtHandle_t handle, MatmulDescs& desc, const AlgoKey& key, size_t workspace_bytes,
                      std::unordered_map<AlgoKey, cublasLtMatmulAlgo_t, AlgoKeyHash>& cache,
                      cublasLtMatmulAlgo_t* algo, absl::string_view what) {
  if (auto it = cache.find(key); it != cache.end()) {
    *algo = it->second;
    return absl::OkStatus();
  }
  MOE_LT_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&desc.pref), "MatmulPreferenceCreate");
  MOE_LT_RETURN_IF_ERROR(
      cublasLtMatmulPreferenceSetAttribute(desc.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                           &workspace_bytes, sizeof(workspace_bytes)),
      "PREF_MAX_WORKSPACE_BYTES");
  const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_a},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_b},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_d},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_d}};
  for (const auto& [attr, value] : aligns) {
    MOE_LT_RETURN_IF_ERROR(cublasLtMatmulPreferenceSetAttribute(desc.pref, attr, &value, sizeof(value)),
                           "PREF_MIN_ALIGNMENT");
  }
  cublasLtMatmulHeuristicResult_t heuristic{};
  int found = 0;
  MOE_LT_RETURN_IF_ERROR(cublasLtMatmulAlgoGetHeuristic(handle, desc.op, desc.a, desc.b, desc.d, desc.d,
                                                        desc.pref, 1, &heuristic, &found),
                         absl::StrCat(what, ": cublasLtMatmulAlgoGetHeuristic"));
  if (found == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": cuBLASLt has no algorithm for ", key.n, "x", key.k, " times (", key.m, "x",
                     key.k, ")^T with operand alignments ", key.align_a, "/", key.align_b, "/", key.align_d,
                     key.fp8 ? " (FP8 block scaling needs CUDA >= 12.9 and sm_90+)" : ""));
  }
  cache.emplace(key, heuristic.algo);
  *algo = heuristic.algo;
  return absl::OkStatus();
}

}  // namespace

struct Blas::AlgoCache {
  std::unordered_map<AlgoKey, cublasLtMatmulAlgo_t, AlgoKeyHash> map;
};

int64_t ScaleLeadingDim(int64_t outer) {
  return (outer + 3) / 4 * 4;
}

int64_t PackedWeightScaleCount(int64_t out_features, int64_t in_features) {
  const int64_t rows = (out_features + kFp8BlockSize - 1) / kFp8BlockSize;
  const int64_t cols = (in_features + kFp8BlockSize - 1) / kFp8BlockSize;
  return ScaleLeadingDim(rows) * cols;
}

void PackWeightScales(const float* scale_inv, int64_t out_features, int64_t in_features, float* packed) {
  const int64_t rows = (out_features + kFp8BlockSize - 1) / kFp8BlockSize;
  const int64_t cols = (in_features + kFp8BlockSize - 1) / kFp8BlockSize;
  const int64_t ld = ScaleLeadingDim(rows);
  std::fill(packed, packed + ld * cols, 0.0f);
  for (int64_t nb = 0; nb < rows; ++nb) {
    for (int64_t kb = 0; kb < cols; ++kb) packed[kb * ld + nb] = scale_inv[nb * cols + kb];
  }
}

absl::StatusOr<std::unique_ptr<Blas>> Blas::Create() {
  std::unique_ptr<Blas> blas(new Blas());
  cublasLtHandle_t handle = nullptr;
  MOE_LT_RETURN_IF_ERROR(cublasLtCreate(&handle), "cublasLtCreate");
  blas->handle_ = handle;
  blas->cache_ = std::make_unique<AlgoCache>();
  absl::StatusOr<void*> ws = Malloc(kWorkspaceBytes, "the cuBLASLt workspace");
  if (!ws.ok()) return ws.status();
  blas->workspace_ = *ws;
  blas->workspace_bytes_ = kWorkspaceBytes;
  return blas;
}

Blas::~Blas() {
  Free(workspace_);
  if (handle_ != nullptr) cublasLtDestroy(static_cast<cublasLtHandle_t>(handle_));
}

absl::Status Blas::Linear(const bf16* x, int64_t x_stride, int64_t num_rows, const DeviceLinearWeight& w,
                          bf16* y, int64_t y_stride, Stream stream) {
  const LinearCall call{x, x_stride, num_rows, &w, y, y_stride};
  return LinearGrouped(std::span<const LinearCall>(&call, 1), stream);
}

absl::Status Blas::LinearGrouped(std::span<const LinearCall> calls, Stream stream) {
  constexpr absl::string_view kFn = "cuda::Blas::Linear";
  for (const LinearCall& c : calls) {
    RETURN_IF_ERROR(CheckPtr(kFn, "w", c.w));
    RETURN_IF_ERROR(CheckWeight(kFn, *c.w));
    RETURN_IF_ERROR(CheckNonNegative(kFn, "num_rows", c.num_rows));
    RETURN_IF_ERROR(CheckStride(kFn, "x_stride", c.x_stride, c.w->in_features));
    RETURN_IF_ERROR(CheckStride(kFn, "y_stride", c.y_stride, c.w->out_features));
    if (c.num_rows > 0) {
      RETURN_IF_ERROR(CheckPtr(kFn, "x", c.x));
      RETURN_IF_ERROR(CheckPtr(kFn, "y", c.y));
    }
  }
  cudaStream_t s = internal::AsCuda(stream);
  const cublasLtHandle_t handle = static_cast<cublasLtHandle_t>(handle_);
  // Quantized activations of the previous FP8 call, reused when the next call reads the same x.
  void* q_buf = nullptr;
  const LinearCall* quantized_for = nullptr;
  int64_t q_scale_ld = 0;
  absl::Status status;
  for (const LinearCall& c : calls) {
    if (c.num_rows == 0) continue;
    const DeviceLinearWeight& w = *c.w;
    if (w.dtype == DType::kF8E4M3) {
      const bool reuse = quantized_for != nullptr && quantized_for->x == c.x &&
                         quantized_for->x_stride == c.x_stride && quantized_for->num_rows == c.num_rows &&
                         quantized_for->w->in_features == w.in_features;
      if (!reuse) {
        if (q_buf != nullptr) status.Update(internal::CudaStatus(cudaFreeAsync(q_buf, s), "cudaFreeAsync"));
        q_buf = nullptr;
        if (!status.ok()) break;
        const int64_t k = w.in_features;
        q_scale_ld = ScaleLeadingDim(c.num_rows);
        const int64_t groups = (k + kFp8BlockSize - 1) / kFp8BlockSize;
        // Codes first (16-byte aligned rows since k % 16 == 0), then the scales.
        const size_t code_bytes = static_cast<size_t>((c.num_rows * k + 15) / 16 * 16);
        const size_t bytes = code_bytes + sizeof(float) * q_scale_ld * groups;
        status.Update(
            internal::CudaStatus(cudaMallocAsync(&q_buf, bytes, s),
                                 "cuda::Blas::Linear: allocating FP8 activations (cudaMallocAsync)"));
        if (!status.ok()) break;
        // Padding rows of the scale tensor stay finite (cuBLASLt may read them).
        status.Update(internal::CudaStatus(
            cudaMemsetAsync(static_cast<uint8_t*>(q_buf) + code_bytes, 0, bytes - code_bytes, s),
            "cudaMemsetAsync"));
        if (!status.ok()) break;
        status.Update(QuantizeFp8PerToken(c.x, c.x_stride, c.num_rows, k, static_cast<uint8_t*>(q_buf), k,
                                          reinterpret_cast<float*>(static_cast<uint8_t*>(q_buf) + code_bytes),
                                          q_scale_ld, stream));
        if (!status.ok()) break;
        quantized_for = &c;
        q_scale_ld = ScaleLeadingDim(c.num_rows);
      }
      const size_t code_bytes = static_cast<size_t>((c.num_rows * w.in_features + 15) / 16 * 16);
      status.Update(Fp8(static_cast<const uint8_t*>(q_buf),
                        reinterpret_cast<const float*>(static_cast<const uint8_t*>(q_buf) + code_bytes),
                        q_scale_ld, c.num_rows, w, c.y, c.y_stride, stream));
      if (!status.ok()) break;
      continue;
    }
    // BF16.
    MatmulDescs desc;
    const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
    status.Update(
        LtStatus(cublasLtMatmulDescCreate(&desc.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "MatmulDescCreate"));
    if (status.ok()) {
      cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a));
      cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b));
      status.Update(LtStatus(
          cublasLtMatrixLayoutCreate(&desc.a, CUDA_R_16BF, w.in_features, w.out_features, w.in_features),
          "MatrixLayoutCreate(A)"));
      status.Update(
          LtStatus(cublasLtMatrixLayoutCreate(&desc.b, CUDA_R_16BF, w.in_features, c.num_rows, c.x_stride),
                   "MatrixLayoutCreate(B)"));
      status.Update(
          LtStatus(cublasLtMatrixLayoutCreate(&desc.d, CUDA_R_16BF, w.out_features, c.num_rows, c.y_stride),
                   "MatrixLayoutCreate(D)"));
    }
    if (!status.ok()) break;
    cublasLtMatmulAlgo_t algo;
    status.Update(FindAlgo(handle, desc,
                           AlgoKey{false, w.out_features, c.num_rows, w.in_features, c.x_stride, c.y_stride,
                                   Alignment(w.data), Alignment(c.x), Alignment(c.y)},
                           workspace_bytes_, cache_->map, &algo, "cuda::Blas::Linear (bf16)"));
    if (!status.ok()) break;
    const float alpha = 1.0f, beta = 0.0f;
    status.Update(LtStatus(cublasLtMatmul(handle, desc.op, &alpha, w.data, desc.a, c.x, desc.b, &beta, c.y,
                                          desc.d, c.y, desc.d, &algo, workspace_, workspace_bytes_, s),
                           "cuda::Blas::Linear (bf16): cublasLtMatmul"));
    if (!status.ok()) break;
  }
  if (q_buf != nullptr) status.Update(internal::CudaStatus(cudaFreeAsync(q_buf, s), "cudaFreeAsync"));
  return status;
}

absl::Status Blas::Fp8(const uint8_t* q, const float* q_scale, int64_t q_scale_ld, int64_t num_rows,
                       const DeviceLinearWeight& w, bf16* y, int64_t y_stride, Stream stream) {
  constexpr absl::string_view kFn = "cuda::Blas::Linear (fp8)";
  const cublasLtHandle_t handle = static_cast<cublasLtHandle_t>(handle_);
  MatmulDescs desc;
  MOE_LT_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&desc.op, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                         "MatmulDescCreate");
  const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
  const cublasLtMatmulMatrixScale_t a_mode = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
  const cublasLtMatmulMatrixScale_t b_mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  const void* a_scale = w.scale;
  const void* b_scale = q_scale;
  MOE_LT_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a)),
      "TRANSA");
  MOE_LT_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b)),
      "TRANSB");
  MOE_LT_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &a_mode, sizeof(a_mode)),
      "A_SCALE_MODE");
  MOE_LT_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &b_mode, sizeof(b_mode)),
      "B_SCALE_MODE");
  MOE_LT_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                                                        &a_scale, sizeof(a_scale)),
                         "A_SCALE_POINTER");
  MOE_LT_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                                                        &b_scale, sizeof(b_scale)),
                         "B_SCALE_POINTER");
  (void)q_scale_ld;  // the layout's leading dimension is implied by the operand's shape (see above)
  MOE_LT_RETURN_IF_ERROR(
      cublasLtMatrixLayoutCreate(&desc.a, CUDA_R_8F_E4M3, w.in_features, w.out_features, w.in_features),
      "MatrixLayoutCreate(A)");
  MOE_LT_RETURN_IF_ERROR(
      cublasLtMatrixLayoutCreate(&desc.b, CUDA_R_8F_E4M3, w.in_features, num_rows, w.in_features),
      "MatrixLayoutCreate(B)");
  MOE_LT_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&desc.d, CUDA_R_16BF, w.out_features, num_rows, y_stride),
                         "MatrixLayoutCreate(D)");
  cublasLtMatmulAlgo_t algo;
  RETURN_IF_ERROR(FindAlgo(handle, desc,
                           AlgoKey{true, w.out_features, num_rows, w.in_features, w.in_features, y_stride,
                                   Alignment(w.data), Alignment(q), Alignment(y)},
                           workspace_bytes_, cache_->map, &algo, kFn));
  const float alpha = 1.0f, beta = 0.0f;
  MOE_LT_RETURN_IF_ERROR(
      cublasLtMatmul(handle, desc.op, &alpha, w.data, desc.a, q, desc.b, &beta, y, desc.d, y, desc.d, &algo,
                     workspace_, workspace_bytes_, internal::AsCuda(stream)),
      absl::StrCat(kFn, ": cublasLtMatmul"));
  return absl::OkStatus();
}

}  // namespace moe::kernels::cuda
