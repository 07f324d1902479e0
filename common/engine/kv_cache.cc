#include "common/engine/kv_cache.h"

namespace moe::engine {

KvCache::KvCache(const model::ModelConfig& config, int64_t block_size, int32_t num_blocks)
    : block_size_(block_size),
      num_kv_heads_(config.num_key_value_heads),
      head_dim_(config.head_dim),
      pool_(num_blocks) {
  const size_t per_layer =
      static_cast<size_t>(num_blocks) * static_cast<size_t>(block_size * num_kv_heads_ * head_dim_);
  k_.resize(static_cast<size_t>(config.num_hidden_layers));
  v_.resize(static_cast<size_t>(config.num_hidden_layers));
  for (size_t l = 0; l < k_.size(); ++l) {
    k_[l].resize(per_layer);
    v_[l].resize(per_layer);
  }
}

int64_t KvCache::BytesPerBlock(const model::ModelConfig& config, int64_t block_size) {
  return 2 * config.num_hidden_layers * block_size * config.num_key_value_heads * config.head_dim *
         static_cast<int64_t>(sizeof(bf16));
}

kernels::cpu::PagedKv KvCache::Layer(int64_t layer) {
  return kernels::cpu::PagedKv{k_[static_cast<size_t>(layer)].data(), v_[static_cast<size_t>(layer)].data(),
                               block_size_, num_kv_heads_, head_dim_};
}

}  // namespace moe::engine
