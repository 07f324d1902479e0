// Iteration-level scheduling policy (continuous batching with chunked prefill), as a pure policy
// object tested by a deterministic step loop. Each step:
//   1. running sequences in arrival order get their next tokens: 1 for a decoding sequence, the next
//      prompt chunk for one still prefilling, within the per-step token budget;
//   2. a running sequence that needs a new KV block when none is free preempts the most recently
//      admitted running sequence (its blocks are freed; it goes back to the head of the queue and is
//      recomputed later: recompute gives bit-identical KV because kernels are batch-invariant);
//   3. waiting sequences are admitted in FIFO order while the budget, max_num_seqs and free blocks
//      allow (a waiting sequence is never admitted ahead of an older one: no starvation).
#ifndef MOE_COMMON_ENGINE_SCHEDULER_H_
#define MOE_COMMON_ENGINE_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <vector>

#include "common/engine/kv_cache_block_pool.h"

namespace moe::engine {

// The scheduler's view of one sequence. Owned by the engine.
struct ScheduledSequence {
  int64_t id = 0;
  int64_t num_tokens = 0;    // prompt + generated so far (all known tokens)
  int64_t num_computed = 0;  // tokens whose KV is in the cache
  std::vector<int32_t> blocks;
};

struct PlannedSegment {
  ScheduledSequence* seq = nullptr;
  int64_t start_pos = 0;
  int64_t num_tokens = 0;
  bool completes = false;  // after this step all known tokens are computed: sample a token
};

struct SchedulerOptions {
  int64_t max_num_seqs = 256;
  int64_t max_step_tokens = 512;  // token budget per step
  int64_t block_size = 16;
};

class Scheduler {
 public:
  Scheduler(SchedulerOptions options, KvCacheBlockPool* pool) : options_(options), pool_(pool) {}

  void Enqueue(ScheduledSequence* seq) { waiting_.push_back(seq); }
  // Removes a sequence wherever it is and frees its blocks.
  void Remove(ScheduledSequence* seq);

  // Plans one step and allocates the KV blocks it needs. `preempted` receives sequences pushed back
  // to the queue this step (their num_computed is reset to 0).
  std::vector<PlannedSegment> Plan(std::vector<ScheduledSequence*>* preempted);

  size_t num_running() const { return running_.size(); }
  size_t num_waiting() const { return waiting_.size(); }

 private:
  bool EnsureBlocks(ScheduledSequence* seq, int64_t num_tokens);
  void Preempt(ScheduledSequence* seq);

  SchedulerOptions options_;
  KvCacheBlockPool* pool_;
  std::vector<ScheduledSequence*> running_;  // admission order
  std::deque<ScheduledSequence*> waiting_;
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_SCHEDULER_H_
