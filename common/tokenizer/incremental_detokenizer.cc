#include "common/tokenizer/incremental_detokenizer.h"

#include "common/tokenizer/utf8.h"

namespace moe::tokenizer {

std::string IncrementalDetokenizer::Add(int32_t id) {
  tokenizer_.AppendTokenBytes(id, skip_special_tokens_, &pending_);
  std::string text;
  // Decoding a maximal subpart does not depend on what follows it, so emitting everything up to
  // an unfinished (but so far valid) tail gives the same text as decoding all bytes at once.
  const size_t consumed = AppendUtf8Replacing(pending_, /*hold_incomplete_tail=*/true, &text);
  pending_.erase(0, consumed);
  return text;
}

std::string IncrementalDetokenizer::Flush() {
  std::string text;
  AppendUtf8Replacing(pending_, /*hold_incomplete_tail=*/false, &text);
  pending_.clear();
  return text;
}

}  // namespace moe::tokenizer
