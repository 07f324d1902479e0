// The paged KV cache of one attention worker: per layer, K and V arrays of
// [num_blocks, block_size, num_kv_heads, head_dim] bf16, and the block pool that hands out blocks.
// Sequences own block tables (lists of block ids); block b holds positions
// [i * block_size, (i + 1) * block_size) of the sequence whose table has b at index i.
#ifndef MOE_COMMON_ENGINE_KV_CACHE_H_
#define MOE_COMMON_ENGINE_KV_CACHE_H_

#include <cstdint>
#include <vector>

#include "common/engine/kv_cache_block_pool.h"
#include "common/kernels/cpu/kernels.h"
#include "common/model/config.h"

namespace moe::engine {

class KvCache {
 public:
  KvCache(const model::ModelConfig& config, int64_t block_size, int32_t num_blocks);

  // Bytes one block takes across all layers (K and V).
  static int64_t BytesPerBlock(const model::ModelConfig& config, int64_t block_size);

  kernels::cpu::PagedKv Layer(int64_t layer);
  KvCacheBlockPool& pool() { return pool_; }
  const KvCacheBlockPool& pool() const { return pool_; }
  int64_t block_size() const { return block_size_; }

 private:
  int64_t block_size_;
  int64_t num_kv_heads_;
  int64_t head_dim_;
  KvCacheBlockPool pool_;
  std::vector<std::vector<bf16>> k_;  // [layer][num_blocks * block_size * Hkv * D]
  std::vector<std::vector<bf16>> v_;
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_KV_CACHE_H_
