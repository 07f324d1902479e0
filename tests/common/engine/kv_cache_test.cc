#include "common/engine/kv_cache.h"

#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace moe::engine {
namespace {

// Qwen3-30B-A3B's attention shape: 48 layers, 4 KV heads of 128 (96 KiB per token).
model::ModelConfig Qwen3_30bAttention() {
  model::ModelConfig config;
  config.num_hidden_layers = 48;
  config.num_key_value_heads = 4;
  config.head_dim = 128;
  return config;
}

// Resident set size of this process in bytes (/proc/self/statm, second field, in pages).
int64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size_pages = 0, resident_pages = 0;
  statm >> size_pages >> resident_pages;
  return resident_pages * sysconf(_SC_PAGESIZE);
}

TEST(KvCacheTest, BytesPerBlockCountsKAndVOfEveryLayer) {
  EXPECT_EQ(KvCache::BytesPerBlock(Qwen3_30bAttention(), 16), 2 * 48 * 16 * 4 * 128 * 2);
}

// A cuda engine's cache: the pool and geometry only, no host K/V (the device holds them).
TEST(KvCacheTest, StorageNoneHasThePoolButNoHostArrays) {
  const int32_t blocks =
      static_cast<int32_t>((int64_t{64} << 30) / KvCache::BytesPerBlock(Qwen3_30bAttention(), 16));
  auto cache = KvCache::Create(Qwen3_30bAttention(), 16, blocks, KvCache::Storage::kNone);
  ASSERT_TRUE(cache.ok()) << cache.status();
  EXPECT_EQ((*cache)->mapped_bytes(), 0);
  EXPECT_EQ((*cache)->pool().num_blocks(), blocks);
  EXPECT_EQ((*cache)->block_size(), 16);
  const kernels::cpu::PagedKv kv = (*cache)->Layer(3);
  EXPECT_EQ(kv.k, nullptr);
  EXPECT_EQ(kv.v, nullptr);
  EXPECT_EQ(kv.num_kv_heads, 4);
  std::vector<int32_t> table;
  EXPECT_TRUE((*cache)->pool().Allocate(2, &table).ok());
  EXPECT_EQ((*cache)->pool().num_free_blocks(), blocks - 2);
  // The same argument checks as with storage.
  EXPECT_EQ(KvCache::Create(Qwen3_30bAttention(), 16, 0, KvCache::Storage::kNone).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(KvCacheTest, ManyGibibytesCostNoResidentMemoryUntilWritten) {
  const int64_t before = ResidentBytes();
  ASSERT_GT(before, 0);
  const int32_t blocks =
      static_cast<int32_t>((int64_t{64} << 30) / KvCache::BytesPerBlock(Qwen3_30bAttention(), 16));
  auto cache = KvCache::Create(Qwen3_30bAttention(), 16, blocks);
  ASSERT_TRUE(cache.ok()) << cache.status();
  EXPECT_EQ((*cache)->mapped_bytes(), int64_t{blocks} * KvCache::BytesPerBlock(Qwen3_30bAttention(), 16));
  EXPECT_EQ((*cache)->pool().num_blocks(), blocks);
  // A zero-filled 64 GiB array would be resident (and take seconds to fill); the mapping is not.
  EXPECT_LT(ResidentBytes() - before, int64_t{16} << 20);

  // Writing one block of one layer makes only that much resident.
  kernels::cpu::PagedKv layer = (*cache)->Layer(47);
  const int64_t block_elements = 16 * 4 * 128;
  for (int64_t i = 0; i < block_elements; ++i) layer.v[(blocks - 1) * block_elements + i] = bf16{0x3f80};
  EXPECT_LT(ResidentBytes() - before, int64_t{16} << 20);
}

TEST(KvCacheTest, StartsZeroedAndLayersAndKVDoNotOverlap) {
  model::ModelConfig config;
  config.num_hidden_layers = 3;
  config.num_key_value_heads = 2;
  config.head_dim = 4;
  auto cache = KvCache::Create(config, 2, 5);
  ASSERT_TRUE(cache.ok()) << cache.status();
  const int64_t per_layer = 5 * 2 * 2 * 4;
  for (int64_t l = 0; l < 3; ++l) {
    kernels::cpu::PagedKv kv = (*cache)->Layer(l);
    EXPECT_EQ(kv.block_size, 2);
    EXPECT_EQ(kv.num_kv_heads, 2);
    EXPECT_EQ(kv.head_dim, 4);
    for (int64_t i = 0; i < per_layer; ++i) {
      ASSERT_EQ(kv.k[i].bits, 0) << "layer " << l << " k " << i;
      ASSERT_EQ(kv.v[i].bits, 0) << "layer " << l << " v " << i;
      kv.k[i].bits = static_cast<uint16_t>(1000 * l + 2 * i + 1);
      kv.v[i].bits = static_cast<uint16_t>(1000 * l + 2 * i + 2);
    }
  }
  for (int64_t l = 0; l < 3; ++l) {
    kernels::cpu::PagedKv kv = (*cache)->Layer(l);
    for (int64_t i = 0; i < per_layer; ++i) {
      ASSERT_EQ(kv.k[i].bits, 1000 * l + 2 * i + 1);
      ASSERT_EQ(kv.v[i].bits, 1000 * l + 2 * i + 2);
    }
  }
}

TEST(KvCacheTest, ASizeThatCannotBeMappedIsAClearError) {
  // 2^31 - 1 blocks of 1.5 MiB is 3 PiB, beyond any process's address space.
  auto cache = KvCache::Create(Qwen3_30bAttention(), 16, std::numeric_limits<int32_t>::max());
  ASSERT_EQ(cache.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(cache.status().message().find("cannot map a KV cache of 3145728.00 GiB"), std::string::npos)
      << cache.status();
}

TEST(KvCacheTest, NoBlocksIsInvalid) {
  EXPECT_EQ(KvCache::Create(Qwen3_30bAttention(), 16, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moe::engine
