// The attention worker's side of a MoE layer (DeepEP naming): Dispatch() groups the tokens by the
// expert worker hosting each chosen expert and sends one message to every expert worker (possibly
// empty); Combine() waits for the answers and sums each token's expert outputs in the gate's rank
// order in fp32, weighted by the routing weights, rounding to bf16 once (docs/numerics.md#combine, the
// v5 grouped_mm semantics). The fixed order makes the result independent of which expert worker
// computed what, so every topology reproduces embedded mode bit for bit.
#ifndef MOE_COMMON_ENGINE_MOE_DISPATCH_H_
#define MOE_COMMON_ENGINE_MOE_DISPATCH_H_

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/engine/expert_liveness.h"
#include "common/engine/expert_placement.h"
#include "common/tensor/bf16.h"
#include "common/transport/activation_transport.h"
#include "common/transport/moe_message.h"

namespace moe::engine {

// The high bits of a message tag's micro_batch number the re-sends of a round's part (0: the first
// send); the low bits are the micro-batch. Expert workers echo the tag, so each re-sent part's answer
// is told apart from every other.
inline constexpr uint32_t kResendShift = 16;

// What Combine() needs from Dispatch(): where each (token, rank) row comes back.
struct DispatchHandle {
  transport::MessageTag tag;  // of the first sends; kind/sender/micro_batch filled per message
  int64_t num_tokens = 0;
  int64_t top_k = 0;
  std::vector<float> weights;  // [num_tokens, top_k] routing weights (fp32)
  std::vector<int32_t> ids;    // [num_tokens, top_k] chosen experts
  const bf16* h = nullptr;     // the dispatched hidden states: valid until Combine returns (re-sends)
  // One message of the round: which expert worker it went to, which re-send it is, its expert groups
  // and, in row order, the (token, rank) slots of its rows.
  struct Part {
    int64_t worker = 0;
    uint32_t resend = 0;
    absl::Status sent;  // Send's result
    std::vector<transport::ExpertGroup> groups;
    std::vector<int32_t> slots;
  };
  std::vector<Part> parts;
  std::vector<int32_t> slot_part;  // [num_tokens * top_k]: the part answering each slot
  std::vector<int32_t> slot_row;   // [num_tokens * top_k]: the slot's row in that part
  uint32_t resends = 0;            // re-sent parts so far
};

// Rows dispatched since the last MoeDispatcher::TakeLoad, summed over layers and micro-batches (a
// re-sent row counts again): what the expert load balancer plans from and how it measures balance.
struct ExpertLoad {
  ExpertLoad() = default;
  ExpertLoad(int64_t num_experts, int64_t num_workers)
      : expert_rows(static_cast<size_t>(num_experts), 0), worker_rows(static_cast<size_t>(num_workers), 0) {}
  std::vector<uint64_t> expert_rows;  // [num_experts]
  std::vector<uint64_t> worker_rows;  // [num_workers]: rows sent to each expert worker
};

class MoeDispatcher {
 public:
  // `liveness` (not owned, may be null: every worker is live) says which expert workers may be sent
  // to and hears which failed a round.
  MoeDispatcher(transport::ActivationTransport* transport, ExpertPlacement placement, int64_t hidden,
                absl::Duration timeout, ExpertLiveness* liveness = nullptr)
      : transport_(transport),
        placement_(std::move(placement)),
        hidden_(hidden),
        timeout_(timeout),
        liveness_(liveness),
        load_(placement_.num_experts(), placement_.num_workers()) {}

  // h: [num_tokens, hidden] bf16 (the post-attention-norm hidden states; it must stay valid until
  // Combine returns); ids/weights: [num_tokens, top_k] from the gate, in rank order. Sends the round's
  // messages: each (token, expert) goes to one live host of the expert (ExpertPlacement::Hosts: its
  // shard's replicas, then its extra copies), token t's rows of expert e to live host (t + e) mod
  // (live hosts), and every live worker gets a message
  // (possibly empty). UNAVAILABLE if some chosen expert has no live replica.
  absl::StatusOr<DispatchHandle> Dispatch(uint64_t step, uint32_t layer, uint32_t micro_batch, const bf16* h,
                                          int64_t num_tokens, const int32_t* ids, const float* weights,
                                          int64_t top_k);
  // Receives every part's answer and writes out: [num_tokens, hidden] bf16. A worker that does not
  // answer before the timeout, or whose connection fails, is reported to the liveness and its part
  // is re-sent to other live replicas of the same shards (failover); the combine order is fixed, so
  // the result is the same whoever answers. UNAVAILABLE when a part's experts have no other live
  // replica; INTERNAL if an answer does not match what was sent.
  //
  // A worker that fails a round while alive (its answer is empty: e.g. an expert worker restarted
  // since the balancer loaded its extra copies, which it lost) and holds extra copies in this
  // placement is taken to have lost them: from then on, until the next SetPlacement, its extra copies
  // get no rows (its home shard still does), and the failed part is re-sent on that basis. A second
  // such answer from it is INTERNAL.
  absl::Status Combine(DispatchHandle& handle, bf16* out);

  // Parts re-sent after a failure since the last call (then resets).
  uint64_t TakeResends() { return std::exchange(resends_, 0); }

  const ExpertPlacement& placement() const { return placement_; }
  // Switches to `placement` (a new version from the balancer) for the rounds dispatched from now on.
  // Call it between rounds (the engine does, between steps): a round's re-sends use the placement it
  // was dispatched with only if no switch came in between, so never switch inside a step. Every worker
  // the new placement sends an expert to must hold it already (so the extra copies a worker was
  // taken to have lost count again). INVALID_ARGUMENT unless only the extra copies differ (same
  // experts, workers, replicas and peers).
  absl::Status SetPlacement(ExpertPlacement placement);
  // Rows dispatched since the last call (then resets).
  ExpertLoad TakeLoad();

  // Wall time spent in Dispatch() and Combine() since the last call (then resets). Combine time
  // includes waiting for the expert workers.
  std::pair<absl::Duration, absl::Duration> TakeTimes() {
    auto times = std::make_pair(dispatch_time_, combine_time_);
    dispatch_time_ = combine_time_ = absl::ZeroDuration();
    return times;
  }

  // Combine's wait for the answers split in two, summed since the last call (then resets):
  // expert_wait, the part the expert workers spent on the round (per round the longest time an
  // expert worker reports holding it, as it computes in parallel with the others; at most the
  // wait), and transport, the rest of the wait (the data plane delivering the dispatch and the
  // answers, and an expert worker's queueing). An answer without an expert time (an older expert
  // worker) counts wholly as transport. transport + expert_wait <= the combine time of TakeTimes,
  // which also holds the weighted sum; the dispatch time is all transport (sending).
  struct WaitSplit {
    absl::Duration transport;
    absl::Duration expert_wait;
  };
  WaitSplit TakeWaitSplit() { return std::exchange(wait_split_, WaitSplit{}); }

 private:
  // Builds and sends the parts for `slots` (all of the round's slots on the first send, a failed
  // part's on a re-send), skipping the workers in `excluded`; appends them to handle->parts.
  absl::Status SendParts(DispatchHandle* handle, const std::vector<int32_t>& slots,
                         const std::vector<bool>& excluded, bool every_live_worker);
  bool Live(int64_t worker) const { return liveness_ == nullptr || liveness_->live(worker); }

  transport::ActivationTransport* transport_;
  ExpertPlacement placement_;
  int64_t hidden_;
  absl::Duration timeout_;
  ExpertLiveness* liveness_;
  // Workers taken to have lost their extra copies (see Combine), per worker; reset by SetPlacement.
  std::vector<bool> extras_lost_ = std::vector<bool>(static_cast<size_t>(placement_.num_workers()), false);
  uint64_t resends_ = 0;
  ExpertLoad load_;
  // The buffer each dispatch message is encoded into, reused across rounds and layers (SendBuffer
  // may swap it for another of the transport's): no allocation or page faults per round once it
  // has grown to the largest message.
  std::vector<std::byte> send_buffer_;
  absl::Duration dispatch_time_;
  absl::Duration combine_time_;
  WaitSplit wait_split_;
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_MOE_DISPATCH_H_
