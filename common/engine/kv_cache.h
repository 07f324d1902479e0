// The paged KV cache of one attention worker: per layer, K and V arrays of
// [num_blocks, block_size, num_kv_heads, head_dim] bf16, and the block pool that hands out blocks.
// Sequences own block tables (lists of block ids); block b holds positions
// [i * block_size, (i + 1) * block_size) of the sequence whose table has b at index i.
//
// Memory: one anonymous private mapping (MAP_NORESERVE) holds every layer's K and V. The kernel
// hands out zero pages on first touch, so construction takes no time whatever the size, and only
// blocks a sequence has written cost resident memory. The contents start as zeros (as a
// zero-filled array would); attention reads only slots its sequence wrote (kernels.h PagedAttention).
#ifndef MOE_COMMON_ENGINE_KV_CACHE_H_
#define MOE_COMMON_ENGINE_KV_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "common/engine/kv_cache_block_pool.h"
#include "common/kernels/cpu/kernels.h"
#include "common/model/config.h"

namespace moe::engine {

class KvCache {
 public:
  // Where the K/V arrays live. kNone: only the block pool and the geometry, for a backend that keeps
  // K and V in device memory itself (CudaAttentionBlock); Layer() is then empty (null pointers).
  enum class Storage { kHost, kNone };

  // A cache of num_blocks blocks of block_size tokens. INVALID_ARGUMENT for num_blocks < 1 or
  // block_size < 1; RESOURCE_EXHAUSTED (naming the size in GiB) when the mapping cannot be made.
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(const model::ModelConfig& config, int64_t block_size,
                                                         int32_t num_blocks,
                                                         Storage storage = Storage::kHost);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  // Bytes one block takes across all layers (K and V).
  static int64_t BytesPerBlock(const model::ModelConfig& config, int64_t block_size);

  kernels::cpu::PagedKv Layer(int64_t layer);
  KvCacheBlockPool& pool() { return pool_; }
  const KvCacheBlockPool& pool() const { return pool_; }
  int64_t block_size() const { return block_size_; }
  // Size of the mapping (all layers, K and V), in bytes; 0 with Storage::kNone.
  int64_t mapped_bytes() const { return static_cast<int64_t>(mapped_bytes_); }

 private:
  KvCache(const model::ModelConfig& config, int64_t block_size, int32_t num_blocks, void* base,
          size_t mapped_bytes);

  int64_t block_size_;
  int64_t num_kv_heads_;
  int64_t head_dim_;
  size_t per_layer_elements_;  // num_blocks * block_size * Hkv * D
  KvCacheBlockPool pool_;
  bf16* base_;  // [layer][K, V][per_layer_elements_]
  size_t mapped_bytes_;
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_KV_CACHE_H_
