#include "common/engine/forward_pass.h"

#include "absl/strings/str_cat.h"

namespace moe::engine {

absl::Status ValidateSegments(const model::ModelConfig& config, int64_t max_positions, int64_t block_size,
                              std::span<const BatchSegment> segments, int64_t* num_tokens) {
  *num_tokens = 0;
  for (const BatchSegment& s : segments) {
    if (s.num_tokens <= 0) return absl::InvalidArgumentError("empty batch segment");
    if (s.start_pos < 0) return absl::InvalidArgumentError(absl::StrCat("negative position ", s.start_pos));
    if (s.start_pos + s.num_tokens > max_positions) {
      return absl::InvalidArgumentError(absl::StrCat("position ", s.start_pos + s.num_tokens - 1,
                                                     " is past the context length ", max_positions));
    }
    const int64_t blocks_needed = (s.start_pos + s.num_tokens + block_size - 1) / block_size;
    if (s.block_table == nullptr || static_cast<int64_t>(s.block_table->size()) < blocks_needed) {
      return absl::InternalError("block table does not cover the segment");
    }
    for (int64_t i = 0; i < s.num_tokens; ++i) {
      if (s.token_ids[i] < 0 || s.token_ids[i] >= config.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "token id ", s.token_ids[i], " is outside the vocabulary [0, ", config.vocab_size, ")"));
      }
    }
    *num_tokens += s.num_tokens;
  }
  return absl::OkStatus();
}

}  // namespace moe::engine
