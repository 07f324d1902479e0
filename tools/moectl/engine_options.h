// Flags shared by the moectl commands that run the embedded engine.
#ifndef MOE_TOOLS_MOECTL_ENGINE_OPTIONS_H_
#define MOE_TOOLS_MOECTL_ENGINE_OPTIONS_H_

#include <cstdint>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "common/engine/engine.h"

namespace moe::moectl {

// The KV cache moectl's embedded commands map when --kv-cache-gib is not given: one sequence of
// the model's full context (they run one request), at most this much.
inline constexpr int64_t kMaxDefaultKvCacheBytes = int64_t{4} << 30;

struct EngineFlags {
  std::string model_dir;
  int expert_shards = 1;
  int64_t max_step_tokens = 512;
  std::optional<double> kv_cache_gib;  // unset: what one full-context sequence needs
  int64_t kv_block_size = 16;

  void Register(CLI::App* cmd, bool required = true);

  // The engine options for model_dir (reads its config.json to size the KV cache).
  // INVALID_ARGUMENT for a --kv-cache-gib that holds no block.
  absl::StatusOr<engine::EngineOptions> ToOptions() const;
};

}  // namespace moe::moectl

#endif  // MOE_TOOLS_MOECTL_ENGINE_OPTIONS_H_
