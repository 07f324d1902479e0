// Flags shared by the moectl commands that run the embedded engine.
#ifndef MOE_TOOLS_MOECTL_ENGINE_OPTIONS_H_
#define MOE_TOOLS_MOECTL_ENGINE_OPTIONS_H_

#include <cstdint>
#include <string>

#include "CLI/CLI.hpp"
#include "common/engine/engine.h"

namespace moe::moectl {

struct EngineFlags {
  std::string model_dir;
  int expert_shards = 1;
  int64_t max_step_tokens = 512;
  int64_t kv_cache_mib = 1024;
  int64_t kv_block_size = 16;

  void Register(CLI::App* cmd, bool required = true) {
    CLI::Option* model = cmd->add_option("--model", model_dir, "Hugging Face model directory");
    model->check(CLI::ExistingDirectory);
    if (required) model->required();
    cmd->add_option("--expert-shards", expert_shards,
                    "Serve the experts from N in-process shards over the loopback transport")
        ->check(CLI::Range(1, 128));
    cmd->add_option("--max-step-tokens", max_step_tokens, "Token budget per engine step (prefill chunk)")
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
    cmd->add_option("--kv-cache-mib", kv_cache_mib, "KV cache size in MiB")
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 22));
    cmd->add_option("--kv-block-size", kv_block_size, "Tokens per KV cache block")
        ->check(CLI::Range(int64_t{1}, int64_t{1024}));
  }

  engine::EngineOptions ToOptions() const {
    engine::EngineOptions options;
    options.max_step_tokens = max_step_tokens;
    options.kv_cache_bytes = kv_cache_mib << 20;
    options.kv_block_size = kv_block_size;
    return options;
  }
};

}  // namespace moe::moectl

#endif  // MOE_TOOLS_MOECTL_ENGINE_OPTIONS_H_
