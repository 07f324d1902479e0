#include "common/engine/scheduler.h"

#include <algorithm>

namespace moe::engine {

void Scheduler::Remove(ScheduledSequence* seq) {
  running_.erase(std::remove(running_.begin(), running_.end(), seq), running_.end());
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), seq), waiting_.end());
  if (!seq->blocks.empty()) {
    pool_->Free(seq->blocks).IgnoreError();  // blocks came from this pool: cannot fail
    seq->blocks.clear();
  }
}

bool Scheduler::EnsureBlocks(ScheduledSequence* seq, int64_t num_tokens) {
  const int32_t needed =
      KvCacheBlockPool::BlocksFor(num_tokens, options_.block_size) - static_cast<int32_t>(seq->blocks.size());
  if (needed <= 0) return true;
  return pool_->Allocate(needed, &seq->blocks).ok();
}

void Scheduler::Preempt(ScheduledSequence* seq) {
  running_.erase(std::remove(running_.begin(), running_.end(), seq), running_.end());
  pool_->Free(seq->blocks).IgnoreError();
  seq->blocks.clear();
  seq->num_computed = 0;
  waiting_.push_front(seq);
}

std::vector<PlannedSegment> Scheduler::Plan(std::vector<ScheduledSequence*>* preempted) {
  std::vector<PlannedSegment> plan;
  int64_t budget = options_.max_step_tokens;

  for (size_t i = 0; i < running_.size() && budget > 0;) {
    ScheduledSequence* seq = running_[i];
    const int64_t remaining = seq->num_tokens - seq->num_computed;
    const int64_t chunk = std::min(remaining, budget);
    if (chunk <= 0) {
      ++i;
      continue;
    }
    if (!EnsureBlocks(seq, seq->num_computed + chunk)) {
      // Out of blocks: preempt the newest running sequence (possibly this one) and retry.
      ScheduledSequence* victim = running_.back();
      for (auto it = plan.begin(); it != plan.end();) {  // it may already be planned this step
        if (it->seq == victim) {
          budget += it->num_tokens;
          it = plan.erase(it);
        } else {
          ++it;
        }
      }
      Preempt(victim);
      preempted->push_back(victim);
      continue;  // running_[i] is the same sequence unless it was the victim (then loop ends)
    }
    plan.push_back({seq, seq->num_computed, chunk, seq->num_computed + chunk == seq->num_tokens});
    budget -= chunk;
    ++i;
  }

  while (budget > 0 && !waiting_.empty() && static_cast<int64_t>(running_.size()) < options_.max_num_seqs) {
    ScheduledSequence* seq = waiting_.front();
    const int64_t chunk = std::min(seq->num_tokens - seq->num_computed, budget);
    if (!EnsureBlocks(seq, seq->num_computed + chunk)) break;  // wait for blocks to free up
    waiting_.pop_front();
    running_.push_back(seq);
    plan.push_back({seq, seq->num_computed, chunk, seq->num_computed + chunk == seq->num_tokens});
    budget -= chunk;
  }
  return plan;
}

}  // namespace moe::engine
