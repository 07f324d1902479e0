// The expert side of a MoE layer: one shard of experts [first, first + count) of every layer, and
// the grouped SwiGLU that serves a dispatch message (all rows routed to one expert in one round go
// through the expert as one matrix product, and all experts of the round share each parallel loop).
//
// The CPU implementation of the expert-compute seam (ExpertCompute).
//
// Thread safety: Serve() may be called concurrently (it only reads weights; each call takes its own
// scratch from a pool that keeps the scratch of earlier rounds for reuse). Each round reads the
// weights it found at its start: a switch into huge pages or a new set of extra experts applies
// to the rounds after it.
#ifndef MOE_COMMON_ENGINE_EXPERT_BLOCK_H_
#define MOE_COMMON_ENGINE_EXPERT_BLOCK_H_

#include <atomic>
#include <cstddef>
#include <memory>
#include <span>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/engine/compute/expert_compute.h"
#include "common/model/config.h"
#include "common/model/weights.h"

namespace moe::engine {

class ExpertBlock : public ExpertCompute {
 public:
  ExpertBlock(const model::ModelConfig& config, std::unique_ptr<model::ExpertShardWeights> weights);

  int64_t first_expert() const override { return first_expert_; }
  int64_t num_experts() const override { return num_experts_; }

  // MOE_WEIGHTS_MEMORY=huge_pages: copies the home shard into huge pages on a background thread
  // while this block serves from the mapping, and switches the rounds that start after the copy
  // is complete over to it (model::HugePageSwitch). Once per block.
  void SwitchToHugePagesInBackground();
  // Waits until that switch is done (or could not be made): a benchmark's steady state.
  void WaitForHugePages();
  // The rounds starting now read the home shard from a huge-page copy.
  bool home_in_huge_pages() const;

  // y = down(silu(gate(x)) * up(x)) for the experts of `layer`. x, y: [num_rows, hidden] bf16.
  absl::Status Apply(int64_t layer, int64_t expert, const bf16* x, int64_t num_rows, bf16* y) const;

  // Decodes a dispatch payload for `layer`, runs each group through its expert and returns the
  // combine payload (same group order). INVALID_ARGUMENT for a malformed message or an expert this
  // shard does not host.
  absl::StatusOr<std::vector<std::byte>> Serve(int64_t layer,
                                               std::span<const std::byte> dispatch) const override;
  // As Serve, encoding into `*out` (reused: see ExpertCompute::ServeInto).
  absl::Status ServeInto(int64_t layer, std::span<const std::byte> dispatch,
                         std::vector<std::byte>* out) const override;

  // Bytes of one expert's weights (gate, up, down) in `layer`; 0 for a dense layer.
  int64_t ExpertWeightBytes(int64_t layer) const override;

  // Per-layer per-expert token counts since start (for load reporting), [layer][local expert]. Rows
  // served by extra experts are not counted here.
  std::vector<std::vector<uint64_t>> TokenCounts() const override;

  // The expert load balancer's extra experts (docs/architecture.md#expert-load-balancer): single
  // experts outside [first_expert, first_expert + num_experts) that this block serves as well, each
  // an ExpertShardWeights of one expert (LoadExpertShard(e, 1)). Replaces the previous set; a
  // round already running keeps the set it started with (their weights live until it ends).
  // INVALID_ARGUMENT naming the expert for one of the home shard, a duplicate, or weights of more
  // than one expert.
  absl::Status SetExtraExperts(std::vector<std::unique_ptr<model::ExpertShardWeights>> extras) override;
  // The extra experts now served, ascending.
  std::vector<int64_t> ExtraExperts() const override;

 private:
  // Extra experts by id, ascending; shared with the rounds using them.
  using Extras = std::vector<std::shared_ptr<const model::ExpertShardWeights>>;
  // What a round reads: the home shard and the extra experts, as they were at its start.
  struct Snapshot {
    std::shared_ptr<const model::ExpertShardWeights> home;
    std::shared_ptr<const Extras> extras;
  };
  Snapshot TakeSnapshot() const;
  // Rows x -> y ([num_rows, hidden], row stride hidden) through one expert.
  struct Group {
    int64_t expert;
    const bf16* x;
    int64_t num_rows;
    bf16* y;
  };
  // Validates every group, then runs the SwiGLU of all groups of one round: gate and up of all
  // groups as one grouped product, SiLU·mul per group, all down projections as one grouped
  // product (two fork/joins per round however many experts it touches). Outputs are identical to
  // running each group alone.
  absl::Status RunGroups(int64_t layer, std::span<const Group> groups) const;

  // The gate and up activations of one round ([total rows x intermediate] each). Rounds take them
  // from scratch_ and put them back, so a round as large as an earlier one neither allocates nor
  // page-faults (at a 4096-token prefill they are tens of MiB per layer); every element a round
  // reads it has written first.
  struct Scratch {
    std::vector<bf16> gate;
    std::vector<bf16> up;
  };
  std::unique_ptr<Scratch> TakeScratch() const;
  void ReturnScratch(std::unique_ptr<Scratch> scratch) const;

  const model::ModelConfig config_;
  const int64_t first_expert_;
  const int64_t num_experts_;
  const size_t num_layers_;  // of the weights (validated against extras)
  mutable ExpertTokenCounter token_counts_;
  mutable absl::Mutex weights_mu_;
  std::shared_ptr<const model::ExpertShardWeights> weights_ ABSL_GUARDED_BY(weights_mu_);
  std::shared_ptr<const Extras> extras_ ABSL_GUARDED_BY(weights_mu_);
  mutable absl::Mutex scratch_mu_;
  // One per round running at once, at most (a round takes one, or makes one if there is none).
  mutable std::vector<std::unique_ptr<Scratch>> scratch_ ABSL_GUARDED_BY(scratch_mu_);
  // Last: destroyed (its thread stopped and joined) before anything it swaps into.
  std::unique_ptr<model::HugePageSwitch> huge_pages_;
};

// An expert block serving `weights` on the CPU, in the memory MOE_WEIGHTS_MEMORY chooses
// (model::WeightsMemoryFromEnv): faulted in, and copied into huge pages now (huge_pages_at_load)
// or, with huge_pages, in the background from when the owner calls
// SwitchToHugePagesInBackground (`*in_background` tells it to; may be null).
std::unique_ptr<ExpertBlock> LoadExpertBlock(const model::ModelConfig& config,
                                             std::unique_ptr<model::ExpertShardWeights> weights,
                                             bool* in_background = nullptr);

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_EXPERT_BLOCK_H_
