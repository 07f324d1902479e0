// The Qwen3 pre-tokenizer: splits normalized text into pieces with the "Split" regex of
// tokenizer.json (behavior "Isolated": matches and the text between them both become pieces).
#ifndef MOE_COMMON_TOKENIZER_PRE_TOKENIZER_H_
#define MOE_COMMON_TOKENIZER_PRE_TOKENIZER_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace moe::tokenizer {

// docs/numerics.md#tokenizer, identical to transformers' Qwen2 PRETOKENIZE_REGEX.
inline constexpr std::string_view kQwen3SplitPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// A compiled split regex (PCRE2, UTF + UCP, JIT when available). Immutable after Create and safe
// to use from several threads at once (each Split call uses its own match data).
class RegexSplitter {
 public:
  // INVALID_ARGUMENT if `pattern` does not compile.
  static absl::StatusOr<std::unique_ptr<RegexSplitter>> Create(std::string_view pattern);
  ~RegexSplitter();
  RegexSplitter(const RegexSplitter&) = delete;
  RegexSplitter& operator=(const RegexSplitter&) = delete;

  // Appends the pieces of `text` (valid UTF-8) to `pieces`, in order; their concatenation is
  // `text`. The views point into `text`. INTERNAL on a PCRE2 matching error (e.g. match limit).
  absl::Status Split(std::string_view text, std::vector<std::string_view>* pieces) const;

 private:
  RegexSplitter() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe::tokenizer

#endif  // MOE_COMMON_TOKENIZER_PRE_TOKENIZER_H_
