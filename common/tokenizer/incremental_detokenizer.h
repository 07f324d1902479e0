// Streaming detokenization: feed generated ids one at a time, get the text they complete.
#ifndef MOE_COMMON_TOKENIZER_INCREMENTAL_DETOKENIZER_H_
#define MOE_COMMON_TOKENIZER_INCREMENTAL_DETOKENIZER_H_

#include <cstdint>
#include <string>

#include "common/tokenizer/tokenizer.h"

namespace moe::tokenizer {

// Turns a stream of token ids into text without ever emitting part of a UTF-8 character: bytes of
// a character split across tokens (emoji, CJK) are held back until it completes. Ill-formed bytes
// become U+FFFD as soon as they can no longer start a valid character. The concatenation of every
// Add() result and the final Flush() equals tokenizer.Decode(all ids, skip_special_tokens).
//
// Not thread-safe (one per stream). `tokenizer` must outlive it.
class IncrementalDetokenizer {
 public:
  explicit IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens = false)
      : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

  // Appends `id` and returns the newly completed text (possibly empty). Invalid ids add nothing,
  // as in Tokenizer::Decode.
  std::string Add(int32_t id);

  // Emits whatever is held back (an unfinished character becomes U+FFFD) and resets the state.
  std::string Flush();

  // Bytes held back waiting for the rest of a character (0..3).
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer& tokenizer_;
  const bool skip_special_tokens_;
  std::string pending_;
};

}  // namespace moe::tokenizer

#endif  // MOE_COMMON_TOKENIZER_INCREMENTAL_DETOKENIZER_H_
