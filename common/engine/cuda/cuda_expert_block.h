// The CUDA implementation of the expert-compute seam: one expert shard's weights in device memory
// (uploaded once at Create: BF16 as is, FP8 as FP8 codes plus their block scales repacked by
// PackWeightScales, no dequantized copy) and Serve on the device: the round's rows copied to the
// device once, gate and up of all experts of the round in one Blas::LinearGrouped call, one SiluMul
// over all of them, down in a second LinearGrouped, the outputs copied back into the combine
// payload. Decoding and validation are the CPU block's (DecodeDispatch), so a bad message gets the
// same INVALID_ARGUMENT on either device and nothing is sent to the device for it.
//
// Thread safety: Serve may be called from any thread, concurrently; calls are serialized by a
// mutex (one stream, one cuBLASLt handle and one grow-only scratch per block). An expert worker
// serves its rounds from one thread anyway (ExpertShardServer), so the mutex costs nothing there.
#ifndef MOE_COMMON_ENGINE_CUDA_CUDA_EXPERT_BLOCK_H_
#define MOE_COMMON_ENGINE_CUDA_CUDA_EXPERT_BLOCK_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/engine/compute/expert_compute.h"
#include "common/kernels/cuda/cuda_kernels.h"
#include "common/model/config.h"
#include "common/model/weights.h"

namespace moe::engine {

class CudaExpertBlock : public ExpertCompute {
 public:
  // Uploads `weights` (one shard of every MoE layer) to device `ordinal`. FAILED_PRECONDITION when
  // the device does not exist (CheckDevice's message, naming "cuda:N"); RESOURCE_EXHAUSTED naming
  // the layer when the shard does not fit in the device's memory; INVALID_ARGUMENT for a weight
  // dtype other than BF16 or F8_E4M3. `weights` may be released by the caller afterwards (nothing
  // on the host is kept but the sizes).
  static absl::StatusOr<std::unique_ptr<CudaExpertBlock>> Create(const model::ModelConfig& config,
                                                                 const model::ExpertShardWeights& weights,
                                                                 int ordinal);
  ~CudaExpertBlock() override;
  CudaExpertBlock(const CudaExpertBlock&) = delete;
  CudaExpertBlock& operator=(const CudaExpertBlock&) = delete;

  int64_t first_expert() const override { return first_expert_; }
  int64_t num_experts() const override { return num_experts_; }
  absl::StatusOr<std::vector<std::byte>> Serve(int64_t layer,
                                               std::span<const std::byte> dispatch) const override;
  int64_t ExpertWeightBytes(int64_t layer) const override;
  std::vector<std::vector<uint64_t>> TokenCounts() const override;

  int ordinal() const { return ordinal_; }
  // Device bytes the weights (and packed scales) occupy.
  int64_t device_weight_bytes() const { return device_weight_bytes_; }

 private:
  // gate, up, down of one expert on the device.
  struct DeviceExpert {
    kernels::cuda::DeviceLinearWeight gate;
    kernels::cuda::DeviceLinearWeight up;
    kernels::cuda::DeviceLinearWeight down;
  };
  // A grow-only device buffer.
  struct Scratch {
    void* ptr = nullptr;
    size_t bytes = 0;
  };

  CudaExpertBlock(const model::ModelConfig& config, const model::ExpertShardWeights& weights, int ordinal);
  // Uploads one layer's experts into one allocation.
  absl::Status UploadLayer(int64_t layer, const std::vector<model::MlpWeights>& experts);
  // Makes `scratch` at least `bytes` long (contents not kept).
  absl::Status Reserve(Scratch* scratch, size_t bytes, const char* what) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const model::ModelConfig config_;
  const int64_t first_expert_;
  const int64_t num_experts_;
  const int ordinal_;
  std::vector<int64_t> expert_weight_bytes_;        // per layer
  std::vector<std::vector<DeviceExpert>> experts_;  // [layer][local expert]; empty for dense layers
  std::vector<void*> allocations_;                  // one per MoE layer
  int64_t device_weight_bytes_ = 0;
  mutable ExpertTokenCounter token_counts_;

  mutable absl::Mutex mu_;
  kernels::cuda::Stream stream_ = nullptr;
  std::unique_ptr<kernels::cuda::Blas> blas_ ABSL_GUARDED_BY(mu_);
  mutable Scratch x_ ABSL_GUARDED_BY(mu_);     // the round's rows [rows, hidden]
  mutable Scratch gate_ ABSL_GUARDED_BY(mu_);  // gate (then silu(gate)*up) [sum rows*inter]
  mutable Scratch up_ ABSL_GUARDED_BY(mu_);
  mutable Scratch y_ ABSL_GUARDED_BY(mu_);  // outputs [rows, hidden]
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_CUDA_CUDA_EXPERT_BLOCK_H_
