// UTF-8 helpers shared by the tokenizer, the incremental detokenizer and moectl.
#ifndef MOE_COMMON_TOKENIZER_UTF8_H_
#define MOE_COMMON_TOKENIZER_UTF8_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace moe::tokenizer {

// OK when `text` is well-formed UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF);
// otherwise INVALID_ARGUMENT naming the byte offset of the first bad sequence.
absl::Status ValidateUtf8(std::string_view text);

// Appends `bytes` decoded as Python's bytes.decode("utf-8", errors="replace") would: every maximal
// ill-formed subpart becomes one U+FFFD (the Unicode "substitution of maximal subparts" practice).
//
// With `hold_incomplete_tail`, a trailing sequence that is a valid but unfinished prefix of a
// character is not decoded; the return value is the number of bytes consumed, so the caller keeps
// bytes[return..] for later. Without it, the whole input is consumed (a broken tail gives U+FFFD).
size_t AppendUtf8Replacing(std::string_view bytes, bool hold_incomplete_tail, std::string* out);

}  // namespace moe::tokenizer

#endif  // MOE_COMMON_TOKENIZER_UTF8_H_
