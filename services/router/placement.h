// Placement policy: which attention worker runs a request. Pure functions, deterministic.
#ifndef MOE_SERVICES_ROUTER_PLACEMENT_H_
#define MOE_SERVICES_ROUTER_PLACEMENT_H_

#include <cstdint>
#include <optional>
#include <span>

namespace moe::router {

// The router's view of one attention worker: its last GetLoad answer plus the KV blocks of the
// requests the router placed on it since that answer was taken (the worker's numbers do not show
// them yet).
struct WorkerView {
  bool ready = false;
  int64_t num_kv_blocks = 0;
  int64_t num_free_kv_blocks = 0;
  int64_t kv_block_size = 0;
  int64_t reserved_kv_blocks = 0;

  int64_t available() const { return num_free_kv_blocks - reserved_kv_blocks; }
};

// KV blocks a sequence of `tokens` tokens needs on a worker with `block_size` tokens per block
// (0 when the block size is unknown).
int64_t KvBlocksNeeded(int64_t tokens, int64_t block_size);

// The ready worker with the most available blocks among those with at least the blocks
// `tokens` needs; ties go to the lowest index. nullopt when none fits now.
std::optional<size_t> PickWorker(std::span<const WorkerView> workers, int64_t tokens);

// False when no ready worker could hold `tokens` even with its whole KV cache free (the request
// would wait forever).
bool FitsSomeWorker(std::span<const WorkerView> workers, int64_t tokens);

}  // namespace moe::router

#endif  // MOE_SERVICES_ROUTER_PLACEMENT_H_
