#include "services/router/placement.h"

namespace moe::router {

int64_t KvBlocksNeeded(int64_t tokens, int64_t block_size) {
  if (block_size <= 0 || tokens <= 0) return 0;
  return (tokens + block_size - 1) / block_size;
}

std::optional<size_t> PickWorker(std::span<const WorkerView> workers, int64_t tokens) {
  std::optional<size_t> best;
  for (size_t i = 0; i < workers.size(); ++i) {
    const WorkerView& w = workers[i];
    if (!w.ready || w.available() < KvBlocksNeeded(tokens, w.kv_block_size)) continue;
    if (!best.has_value() || w.available() > workers[*best].available()) best = i;
  }
  return best;
}

bool FitsSomeWorker(std::span<const WorkerView> workers, int64_t tokens) {
  for (const WorkerView& w : workers) {
    if (w.ready && w.num_kv_blocks >= KvBlocksNeeded(tokens, w.kv_block_size)) return true;
  }
  return false;
}

}  // namespace moe::router
