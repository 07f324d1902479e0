// The expert-compute seam: what serves one dispatch message of one MoE layer for a shard of
// experts (decode, grouped SwiGLU per expert, encode the combine payload), whatever the device.
// Implemented by the CPU ExpertBlock (common/engine/expert_block.h) and, in CUDA builds, by
// CudaExpertBlock (common/engine/cuda/cuda_expert_block.h); ExpertShardServer and the expert
// worker see only this interface. Also here: the dispatch decoding and validation both share, so
// that every device answers a malformed message with the same error, and the per-expert token
// counters.
#ifndef MOE_COMMON_ENGINE_COMPUTE_EXPERT_COMPUTE_H_
#define MOE_COMMON_ENGINE_COMPUTE_EXPERT_COMPUTE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/model/config.h"
#include "common/model/weights.h"
#include "common/tensor/bf16.h"
#include "common/transport/moe_message.h"

namespace moe::engine {

class ExpertCompute {
 public:
  virtual ~ExpertCompute() = default;

  // The hosted experts: [first_expert(), first_expert() + num_experts()) of every MoE layer.
  virtual int64_t first_expert() const = 0;
  virtual int64_t num_experts() const = 0;

  // Decodes a dispatch payload for `layer`, runs each group through its expert and returns the
  // combine payload (same group order). INVALID_ARGUMENT for a malformed message or an expert this
  // shard does not host (DecodeDispatch's errors); device failures as the device reports them.
  // Whether it may be called concurrently is the implementation's to say.
  virtual absl::StatusOr<std::vector<std::byte>> Serve(int64_t layer,
                                                       std::span<const std::byte> dispatch) const = 0;
  // As Serve, writing the combine payload into `*out`, a buffer to reuse (its capacity is kept when
  // it suffices, so a round of the size of an earlier one allocates nothing). On an error `*out` is
  // unspecified. The default calls Serve and moves its payload into `*out`.
  virtual absl::Status ServeInto(int64_t layer, std::span<const std::byte> dispatch,
                                 std::vector<std::byte>* out) const;

  // Bytes of one expert's weights (gate, up, down) in `layer`; 0 for a dense layer.
  virtual int64_t ExpertWeightBytes(int64_t layer) const = 0;

  // Per-layer per-expert token counts since start (for load reporting), [layer][local expert].
  virtual std::vector<std::vector<uint64_t>> TokenCounts() const = 0;

  // The expert load balancer's extra experts (docs/architecture.md#expert-load-balancer): single
  // experts outside the home shard that this block serves as well, replacing the previous set.
  // Default: FAILED_PRECONDITION (the CUDA block does not take extras yet).
  virtual absl::Status SetExtraExperts(std::vector<std::unique_ptr<model::ExpertShardWeights>> extras);
  // The extra experts now served, ascending.
  virtual std::vector<int64_t> ExtraExperts() const { return {}; }
};

// INVALID_ARGUMENT unless `layer` is one of `config`'s MoE layers.
absl::Status CheckMoeLayer(const model::ModelConfig& config, int64_t layer);
// INVALID_ARGUMENT unless `expert` is in [first_expert, first_expert + num_experts) and
// num_rows >= 0.
absl::Status CheckExpertGroup(int64_t first_expert, int64_t num_experts, int64_t expert, int64_t num_rows);

// A validated dispatch and the combine payload to fill: `out` holds the combine message's header
// (the dispatch's groups) and room for its rows, which start at `rows_out` (and room for the
// expert-time stamp, EncodeMoeMessageHeader).
struct DecodedDispatch {
  transport::MoeMessageView in;  // points into the dispatch payload
  std::vector<std::byte> out;
  bf16* rows_out = nullptr;  // [in.total_rows, in.hidden], inside `out`
};
// Decodes `dispatch` (DecodeMoeMessage's errors), checks its hidden size against `config`, that
// `layer` is an MoE layer and that every group's expert is hosted ([first_expert, first_expert +
// num_experts)), and encodes the combine header. Nothing is computed on a bad message. With
// check_experts false the groups' experts are left to the caller (a block that also serves the
// balancer's extra experts checks them against its own set). The combine payload is encoded into
// `out_buffer` (a buffer to reuse, e.g. an earlier round's; its contents are overwritten).
absl::StatusOr<DecodedDispatch> DecodeDispatch(const model::ModelConfig& config, int64_t first_expert,
                                               int64_t num_experts, int64_t layer,
                                               std::span<const std::byte> dispatch, bool check_experts = true,
                                               std::vector<std::byte> out_buffer = {});

// Bytes of one expert's weights (gate, up, down) in `layer` of `weights`; 0 for a dense layer.
int64_t ShardExpertWeightBytes(const model::ExpertShardWeights& weights, int64_t layer);

// Token rows served per layer and local expert, lock-free (relaxed atomics).
class ExpertTokenCounter {
 public:
  ExpertTokenCounter(int64_t num_layers, int64_t num_experts);
  void Add(int64_t layer, int64_t local_expert, uint64_t rows);
  // [layer][local expert].
  std::vector<std::vector<uint64_t>> Snapshot() const;

 private:
  int64_t num_experts_;
  std::vector<std::unique_ptr<std::atomic<uint64_t>[]>> counts_;
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_COMPUTE_EXPERT_COMPUTE_H_
