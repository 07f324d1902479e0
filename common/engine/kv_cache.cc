#include "common/engine/kv_cache.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moe::engine {

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(const model::ModelConfig& config, int64_t block_size,
                                                         int32_t num_blocks, Storage storage) {
  if (num_blocks < 1) return absl::InvalidArgumentError("the KV cache holds no block");
  if (block_size < 1) return absl::InvalidArgumentError(absl::StrCat("KV block size ", block_size, " < 1"));
  const int64_t per_block = BytesPerBlock(config, block_size);
  if (per_block <= 0) return absl::InvalidArgumentError("the model has no KV cache (no layers or heads)");
  if (num_blocks > INT64_MAX / per_block) return absl::InvalidArgumentError("the KV cache size overflows");
  const size_t bytes = static_cast<size_t>(per_block) * static_cast<size_t>(num_blocks);
  if (storage == Storage::kNone) {
    return std::unique_ptr<KvCache>(new KvCache(config, block_size, num_blocks, nullptr, 0));
  }
  // Private anonymous memory reads as zeros and costs nothing until touched. NORESERVE: an unused
  // block must not count against the commit limit either, or a large cache could not be mapped on a
  // machine with strict overcommit even though most of it is never written.
  void* base =
      mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) {
    const int err = errno;
    return absl::ResourceExhaustedError(
        absl::StrFormat("cannot map a KV cache of %.2f GiB (%d blocks of %d tokens): %s; ask for less "
                        "(--kv-cache-gib / --kv_cache_gib / MOE_KV_CACHE_GIB)",
                        static_cast<double>(bytes) / (1 << 30), num_blocks, block_size, std::strerror(err)));
  }
  return std::unique_ptr<KvCache>(new KvCache(config, block_size, num_blocks, base, bytes));
}

KvCache::KvCache(const model::ModelConfig& config, int64_t block_size, int32_t num_blocks, void* base,
                 size_t mapped_bytes)
    : block_size_(block_size),
      num_kv_heads_(config.num_key_value_heads),
      head_dim_(config.head_dim),
      per_layer_elements_(static_cast<size_t>(num_blocks) *
                          static_cast<size_t>(block_size * num_kv_heads_ * head_dim_)),
      pool_(num_blocks),
      base_(static_cast<bf16*>(base)),
      mapped_bytes_(mapped_bytes) {}

KvCache::~KvCache() {
  if (base_ != nullptr) munmap(base_, mapped_bytes_);
}

int64_t KvCache::BytesPerBlock(const model::ModelConfig& config, int64_t block_size) {
  return 2 * config.num_hidden_layers * block_size * config.num_key_value_heads * config.head_dim *
         static_cast<int64_t>(sizeof(bf16));
}

kernels::cpu::PagedKv KvCache::Layer(int64_t layer) {
  if (base_ == nullptr) return kernels::cpu::PagedKv{nullptr, nullptr, block_size_, num_kv_heads_, head_dim_};
  bf16* k = base_ + 2 * static_cast<size_t>(layer) * per_layer_elements_;
  return kernels::cpu::PagedKv{k, k + per_layer_elements_, block_size_, num_kv_heads_, head_dim_};
}

}  // namespace moe::engine
