// NFC normalization (utf8proc) with a fast path for text that is NFC whatever its context.
#ifndef MOE_COMMON_TOKENIZER_NFC_H_
#define MOE_COMMON_TOKENIZER_NFC_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace moe::tokenizer {

// True for code points that NFC leaves alone in any context: combining class 0, unchanged by NFC
// on their own, and never the second half of a canonical composition. Covers U+0000..U+02FF,
// most Cyrillic, kana, CJK ideographs, Hangul syllables and emoji (the test checks the property
// for every code point against utf8proc).
bool IsNfcInert(char32_t cp);

// NFC of `text` (valid UTF-8). Returns `text` itself when every code point is inert; otherwise
// normalizes into `*storage` and returns a view of it. INTERNAL if utf8proc fails.
absl::StatusOr<std::string_view> NormalizeNfc(std::string_view text, std::string* storage);

}  // namespace moe::tokenizer

#endif  // MOE_COMMON_TOKENIZER_NFC_H_
