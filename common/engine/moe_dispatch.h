// The attention worker's side of a MoE layer (DeepEP naming): Dispatch() groups the tokens by the
// expert worker hosting each chosen expert and sends one message to every expert worker (possibly
// empty); Combine() waits for the answers and sums each token's expert outputs in the gate's rank
// order in fp32, weighted by the routing weights, rounding to bf16 once (docs/numerics.md#combine, the
// v5 grouped_mm semantics). The fixed order makes the result independent of which expert worker
// computed what, so every topology reproduces embedded mode bit for bit.
#ifndef MOE_COMMON_ENGINE_MOE_DISPATCH_H_
#define MOE_COMMON_ENGINE_MOE_DISPATCH_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/engine/expert_placement.h"
#include "common/tensor/bf16.h"
#include "common/transport/activation_transport.h"
#include "common/transport/moe_message.h"

namespace moe::engine {

// What Combine() needs from Dispatch(): where each (token, rank) row comes back.
struct DispatchHandle {
  transport::MessageTag tag;  // kind/sender filled per message
  int64_t num_tokens = 0;
  int64_t top_k = 0;
  std::vector<float> weights;  // [num_tokens, top_k] routing weights (fp32)
  // For each expert worker: number of rows sent, and per (token, rank) the worker and row index.
  std::vector<int64_t> rows_per_worker;
  std::vector<int32_t> slot_worker;  // [num_tokens * top_k]
  std::vector<int32_t> slot_row;     // [num_tokens * top_k]
  std::vector<std::vector<transport::ExpertGroup>> groups_per_worker;
};

class MoeDispatcher {
 public:
  MoeDispatcher(transport::ActivationTransport* transport, ExpertPlacement placement, int64_t hidden,
                absl::Duration timeout)
      : transport_(transport), placement_(std::move(placement)), hidden_(hidden), timeout_(timeout) {}

  // h: [num_tokens, hidden] bf16 (the post-attention-norm hidden states); ids/weights:
  // [num_tokens, top_k] from the gate, in rank order. Sends the round's messages.
  absl::StatusOr<DispatchHandle> Dispatch(uint64_t step, uint32_t layer, uint32_t micro_batch, const bf16* h,
                                          int64_t num_tokens, const int32_t* ids, const float* weights,
                                          int64_t top_k);
  // Receives every expert worker's answer and writes out: [num_tokens, hidden] bf16. UNAVAILABLE if
  // a worker does not answer before the timeout; INTERNAL if an answer does not match the dispatch.
  absl::Status Combine(const DispatchHandle& handle, bf16* out);

  const ExpertPlacement& placement() const { return placement_; }

  // Wall time spent in Dispatch() and Combine() since the last call (then resets). Combine time
  // includes waiting for the expert workers.
  std::pair<absl::Duration, absl::Duration> TakeTimes() {
    auto times = std::make_pair(dispatch_time_, combine_time_);
    dispatch_time_ = combine_time_ = absl::ZeroDuration();
    return times;
  }

 private:
  transport::ActivationTransport* transport_;
  ExpertPlacement placement_;
  int64_t hidden_;
  absl::Duration timeout_;
  absl::Duration dispatch_time_;
  absl::Duration combine_time_;
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_MOE_DISPATCH_H_
