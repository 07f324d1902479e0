#include "common/tokenizer/utf8.h"

#include <cstdint>

#include "absl/strings/str_cat.h"

namespace moe::tokenizer {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the well-formed sequence starting at text[i], or, when it is ill-formed, -k where k>=1
// is the length of its maximal subpart (the bytes that were a valid prefix, at least the lead).
// `*incomplete` is set when the input ended inside a valid prefix.
int SequenceLength(std::string_view text, size_t i, bool* incomplete) {
  *incomplete = false;
  const uint8_t b0 = static_cast<uint8_t>(text[i]);
  if (b0 < 0x80) return 1;
  int need;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte (Unicode Table 3-7)
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return -1;
  }
  for (int k = 1; k <= need; ++k) {
    if (i + k >= text.size()) {
      *incomplete = true;
      return -k;
    }
    const uint8_t b = static_cast<uint8_t>(text[i + k]);
    const bool ok = (k == 1) ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) return -k;
  }
  return need + 1;
}

}  // namespace

absl::Status ValidateUtf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= text.size()) {
      uint64_t word;
      __builtin_memcpy(&word, text.data() + i, 8);
      if (word & 0x8080808080808080ULL) break;
      i += 8;
    }
    if (i >= text.size()) break;
    bool incomplete;
    const int n = SequenceLength(text, i, &incomplete);
    if (n < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid UTF-8 at byte offset ", i, incomplete ? " (truncated sequence)" : ""));
    }
    i += n;
  }
  return absl::OkStatus();
}

size_t AppendUtf8Replacing(std::string_view bytes, bool hold_incomplete_tail, std::string* out) {
  size_t i = 0;
  while (i < bytes.size()) {
    bool incomplete;
    const int n = SequenceLength(bytes, i, &incomplete);
    if (n > 0) {
      out->append(bytes.data() + i, n);
      i += n;
      continue;
    }
    if (incomplete && hold_incomplete_tail) return i;
    out->append(kReplacement);
    i += -n;
  }
  return i;
}

}  // namespace moe::tokenizer
