#include "common/engine/kv_cache_block_pool.h"

#include <algorithm>
#include <functional>
#include <limits>

#include "absl/strings/str_cat.h"

namespace moe::engine {

KvCacheBlockPool::KvCacheBlockPool(int32_t num_blocks)
    : allocated_(static_cast<size_t>(std::max<int32_t>(num_blocks, 0)), false) {
  free_ids_.reserve(allocated_.size());
  for (int32_t id = static_cast<int32_t>(allocated_.size()) - 1; id >= 0; --id) {
    free_ids_.push_back(id);
  }
}

int32_t KvCacheBlockPool::num_blocks() const {
  return static_cast<int32_t>(allocated_.size());
}

int32_t KvCacheBlockPool::num_free_blocks() const {
  return static_cast<int32_t>(free_ids_.size());
}

int32_t KvCacheBlockPool::BlocksFor(int64_t num_tokens, int64_t block_size) {
  if (block_size <= 0) return -1;
  if (num_tokens <= 0) return 0;
  // num_tokens / block_size + (remainder != 0) cannot overflow, unlike (n + b - 1) / b.
  const int64_t blocks = num_tokens / block_size + (num_tokens % block_size != 0 ? 1 : 0);
  return static_cast<int32_t>(std::min<int64_t>(blocks, std::numeric_limits<int32_t>::max()));
}

bool KvCacheBlockPool::CanAllocate(int32_t count) const {
  return count >= 0 && count <= num_free_blocks();
}

absl::Status KvCacheBlockPool::Allocate(int32_t count, std::vector<int32_t>* blocks) {
  if (blocks == nullptr) return absl::InvalidArgumentError("Allocate: blocks must not be null");
  if (count < 0) return absl::InvalidArgumentError(absl::StrCat("Allocate: count ", count, " < 0"));
  if (!CanAllocate(count)) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache: ", count, " blocks requested, ",
                                                     num_free_blocks(), " of ", num_blocks(), " free"));
  }
  blocks->reserve(blocks->size() + static_cast<size_t>(count));
  for (int32_t i = 0; i < count; ++i) {
    const int32_t id = free_ids_.back();
    free_ids_.pop_back();
    allocated_[id] = true;
    blocks->push_back(id);
  }
  return absl::OkStatus();
}

absl::Status KvCacheBlockPool::Free(const std::vector<int32_t>& blocks) {
  // Validate everything first so a bad list frees nothing (the pool stays consistent for the
  // caller to report and carry on).
  std::vector<int32_t> sorted = blocks;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) {
    const int32_t id = sorted[i];
    if (id < 0 || id >= num_blocks()) {
      return absl::InternalError(
          absl::StrCat("KV cache: freeing block ", id, " outside [0, ", num_blocks(), ")"));
    }
    if (!allocated_[id] || (i > 0 && sorted[i - 1] == id)) {
      return absl::InternalError(absl::StrCat("KV cache: double free of block ", id));
    }
  }
  for (const int32_t id : sorted) allocated_[id] = false;
  // Merge back keeping free_ids_ descending.
  std::vector<int32_t> merged(free_ids_.size() + sorted.size());
  std::merge(free_ids_.begin(), free_ids_.end(), sorted.rbegin(), sorted.rend(), merged.begin(),
             std::greater<int32_t>());
  free_ids_ = std::move(merged);
  return absl::OkStatus();
}

}  // namespace moe::engine
