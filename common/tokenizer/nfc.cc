#include "common/tokenizer/nfc.h"

#include <utf8proc.h>

#include <cstdint>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace moe::tokenizer {

bool IsNfcInert(char32_t cp) {
  return cp < 0x300 ||                      // Latin, IPA: nothing composes onto them as second
         (cp >= 0x400 && cp <= 0x482) ||    // Cyrillic without the combining marks 0483..0489
         (cp >= 0x48A && cp <= 0x4FF) ||    //
         (cp >= 0x3041 && cp <= 0x3096) ||  // Hiragana (not the voicing marks 3099/309A)
         (cp >= 0x30A1 && cp <= 0x30FA) ||  // Katakana
         (cp >= 0x3400 && cp <= 0x4DBF) ||  // CJK Extension A
         (cp >= 0x4E00 && cp <= 0x9FFF) ||  // CJK Unified Ideographs
         (cp >= 0xAC00 && cp <= 0xD7A3) ||  // Hangul syllables (a following T jamo is not inert)
         (cp >= 0x1F000 && cp <= 0x1FAFF);  // emoji and pictographs
}

absl::StatusOr<std::string_view> NormalizeNfc(std::string_view text, std::string* storage) {
  bool inert = true;
  for (size_t i = 0; i < text.size() && inert;) {
    const uint8_t b0 = static_cast<uint8_t>(text[i]);
    if (b0 < 0x80) {
      ++i;
      continue;
    }
    // `text` is valid UTF-8, so the lead byte gives the length.
    char32_t cp;
    if (b0 < 0xE0) {
      cp = (b0 & 0x1Fu) << 6 | (static_cast<uint8_t>(text[i + 1]) & 0x3Fu);
      i += 2;
    } else if (b0 < 0xF0) {
      cp = (b0 & 0x0Fu) << 12 | (static_cast<uint8_t>(text[i + 1]) & 0x3Fu) << 6 |
           (static_cast<uint8_t>(text[i + 2]) & 0x3Fu);
      i += 3;
    } else {
      cp = (b0 & 0x07u) << 18 | (static_cast<uint8_t>(text[i + 1]) & 0x3Fu) << 12 |
           (static_cast<uint8_t>(text[i + 2]) & 0x3Fu) << 6 | (static_cast<uint8_t>(text[i + 3]) & 0x3Fu);
      i += 4;
    }
    inert = IsNfcInert(cp);
  }
  if (inert) return text;

  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                          static_cast<utf8proc_ssize_t>(text.size()), &out,
                                          static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) return absl::InternalError(absl::StrCat("NFC failed: ", utf8proc_errmsg(n)));
  storage->assign(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
  std::free(out);
  return std::string_view(*storage);
}

}  // namespace moe::tokenizer
