#include "tools/moectl/engine_options.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/engine/kv_cache.h"
#include "common/model/config.h"
#include "common/status/status_macros.h"

namespace moe::moectl {

void EngineFlags::Register(CLI::App* cmd, bool required) {
  CLI::Option* model = cmd->add_option("--model", model_dir, "Hugging Face model directory");
  model->check(CLI::ExistingDirectory);
  if (required) model->required();
  cmd->add_option("--expert-shards", expert_shards,
                  "Serve the experts from N in-process shards over the loopback transport")
      ->check(CLI::Range(1, 128));
  cmd->add_option("--max-step-tokens", max_step_tokens, "Token budget per engine step (prefill chunk)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  cmd->add_option("--kv-cache-gib", kv_cache_gib,
                  "KV cache size in GiB (default: one sequence of the model's full context, at most 4 GiB; "
                  "pages cost memory only once written)")
      ->envname("MOE_KV_CACHE_GIB")
      ->check(CLI::Range(1.0 / 1024, 1024.0 * 1024));
  cmd->add_option("--kv-block-size", kv_block_size, "Tokens per KV cache block")
      ->check(CLI::Range(int64_t{1}, int64_t{1024}));
}

absl::StatusOr<engine::EngineOptions> EngineFlags::ToOptions() const {
  ASSIGN_OR_RETURN(model::ModelConfig config, model::ModelConfig::FromFile(model_dir + "/config.json"));
  engine::EngineOptions options;
  options.max_step_tokens = max_step_tokens;
  options.kv_block_size = kv_block_size;
  const int64_t per_block = engine::KvCache::BytesPerBlock(config, kv_block_size);
  if (per_block <= 0) return absl::InvalidArgumentError("config.json: the model has no KV cache");
  if (kv_cache_gib) {
    options.kv_cache_bytes = static_cast<int64_t>(std::llround(*kv_cache_gib * (int64_t{1} << 30)));
    if (options.kv_cache_bytes < per_block) {
      return absl::InvalidArgumentError(absl::StrCat("--kv-cache-gib ", *kv_cache_gib,
                                                     " holds no KV block (one block of ", kv_block_size,
                                                     " tokens takes ", per_block, " bytes)"));
    }
  } else {
    const int64_t blocks = engine::KvCacheBlockPool::BlocksFor(config.max_position_embeddings, kv_block_size);
    options.num_kv_blocks = std::max<int64_t>(1, std::min(blocks, kMaxDefaultKvCacheBytes / per_block));
  }
  return options;
}

}  // namespace moe::moectl
