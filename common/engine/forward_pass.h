// The device seam of the engine: one engine step's forward pass (segments in, fp32 logits of the
// segments that want them out). The CPU implementation is AttentionBlock (attention_block.h); the
// CUDA one is CudaAttentionBlock (cuda/cuda_attention_block.h), built only with MOE_WITH_CUDA. The
// engine owns the scheduler and the KV block pool on the host either way: a backend sees block
// tables, never allocates blocks (docs/gpu.md#the-engine-device-seam).
#ifndef MOE_COMMON_ENGINE_FORWARD_PASS_H_
#define MOE_COMMON_ENGINE_FORWARD_PASS_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/kernels/device_spec.h"
#include "common/model/config.h"
#include "common/model/weights.h"

namespace moe::engine {

class MoeDispatcher;

// `num_tokens` tokens of one sequence at positions [start_pos, start_pos + num_tokens).
struct BatchSegment {
  const int32_t* token_ids = nullptr;
  int64_t num_tokens = 0;
  int64_t start_pos = 0;
  const std::vector<int32_t>* block_table = nullptr;  // must cover start_pos + num_tokens
  bool want_logits = false;                           // logits of the segment's last token
};

class ForwardPass {
 public:
  virtual ~ForwardPass() = default;
  // Runs the step. logits: [segments with want_logits, vocab] fp32 (the bf16 lm_head output
  // upcast), in segment order, on the host. Errors from the data plane (UNAVAILABLE) fail the step.
  virtual absl::Status Forward(uint64_t step, std::span<const BatchSegment> segments,
                               std::vector<float>* logits) = 0;
  // Context length the RoPE table covers.
  virtual int64_t max_positions() const = 0;
  // Micro-batches the last Forward ran (1 or 2).
  virtual int last_micro_batches() const = 0;
};

// The checks every backend makes before running a step: non-empty segments, positions inside
// [0, max_positions), block tables covering each segment (blocks of block_size), token ids inside
// the vocabulary. Sets *num_tokens to the step's token count.
absl::Status ValidateSegments(const model::ModelConfig& config, int64_t max_positions, int64_t block_size,
                              std::span<const BatchSegment> segments, int64_t* num_tokens);

// What a CUDA forward pass is built from (see CreateCudaForwardPass).
struct CudaForwardOptions {
  kernels::DeviceSpec device;
  int64_t kv_block_size = 16;
  int32_t num_kv_blocks = 0;
  int64_t kv_cache_bytes = 0;  // the option the block count came from, for error messages
};

// Whether `device` can run an engine: OK for the CPU; for cuda:N, FAILED_PRECONDITION naming the
// device when this build has no CUDA, there is no driver, or the machine has fewer devices.
absl::Status CheckEngineDevice(const kernels::DeviceSpec& device);

// The CUDA backend (cuda/cuda_attention_block.h, loaded from the CUDA backend plugin:
// compute/cuda_backend_plugin.h; defined in expert_compute_factory.cc): uploads the dense weights and
// allocates the paged KV cache on options.device. `weights` and `dispatcher` (null for dense models) are not
// owned. Without CUDA in the build: FAILED_PRECONDITION saying so.
absl::StatusOr<std::unique_ptr<ForwardPass>> CreateCudaForwardPass(const model::ModelConfig& config,
                                                                   const model::DenseWeights& weights,
                                                                   MoeDispatcher* dispatcher,
                                                                   const CudaForwardOptions& options);

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_FORWARD_PASS_H_
