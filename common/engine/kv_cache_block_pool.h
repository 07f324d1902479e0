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
  // A pool of blocks 0 .. num_blocks - 1, all free. A negative num_blocks gives an empty pool.
  explicit KvCacheBlockPool(int32_t num_blocks);

  int32_t num_blocks() const;
  int32_t num_free_blocks() const;
  // Blocks needed to hold num_tokens tokens in blocks of block_size: ceil(num_tokens / block_size),
  // 0 for num_tokens <= 0, saturated at INT32_MAX (which never fits). -1 if block_size <= 0 (a
  // caller bug; CanAllocate(-1) is false).
  static int32_t BlocksFor(int64_t num_tokens, int64_t block_size);
  // True iff 0 <= count <= num_free_blocks(). The "plan" half: no state changes.
  bool CanAllocate(int32_t count) const;
  // Appends `count` block ids to `blocks` (lowest free ids first, deterministic).
  // RESOURCE_EXHAUSTED and nothing allocated if fewer than `count` are free; INVALID_ARGUMENT for
  // count < 0 or a null `blocks`. count == 0 is a no-op.
  absl::Status Allocate(int32_t count, std::vector<int32_t>* blocks);
  // Returns blocks to the pool. INTERNAL (and nothing freed) for an id out of range or not
  // allocated (double free, including an id repeated within `blocks`).
  absl::Status Free(const std::vector<int32_t>& blocks);

 private:
  // allocated_[id] is the source of truth for double-free detection; free_ids_ is kept sorted
  // descending so the lowest free id is at the back (O(1) pop for the common one-block decode
  // allocation).
  std::vector<bool> allocated_;
  std::vector<int32_t> free_ids_;
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_KV_CACHE_BLOCK_POOL_H_
