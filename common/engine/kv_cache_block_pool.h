// A pool of fixed-size KV cache blocks ("plan, then apply", as llama.cpp's KV cache does): callers
// ask whether an allocation fits, then allocate; "no free block" is a distinct, non-fatal result
// (RESOURCE_EXHAUSTED), never a crash. Block ids index the per-layer K/V arrays of KvCache.
//
// Thread safety: not thread-safe; the owning step loop serializes access.
#ifndef MOE_COMMON_ENGINE_KV_CACHE_BLOCK_POOL_H_
#define MOE_COMMON_ENGINE_KV_CACHE_BLOCK_POOL_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moe::engine {

class KvCacheBlockPool {
 public:
  explicit KvCacheBlockPool(int32_t num_blocks);

  int32_t num_blocks() const;
  int32_t num_free_blocks() const;
  // Blocks needed to hold num_tokens tokens in blocks of block_size.
  static int32_t BlocksFor(int64_t num_tokens, int64_t block_size);
  bool CanAllocate(int32_t count) const;
  // Appends `count` block ids to `blocks` (lowest free ids first, deterministic). RESOURCE_EXHAUSTED
  // and nothing allocated if fewer than `count` are free.
  absl::Status Allocate(int32_t count, std::vector<int32_t>* blocks);
  // Returns blocks to the pool. INTERNAL (and nothing freed) for an id out of range or not allocated
  // (double free).
  absl::Status Free(const std::vector<int32_t>& blocks);

 private:
  // ... implementation state
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_KV_CACHE_BLOCK_POOL_H_
