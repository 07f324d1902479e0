#include "common/tokenizer/pre_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace moe::tokenizer {
namespace {

std::string Pcre2ErrorMessage(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof(buffer));
  return reinterpret_cast<const char*>(buffer);
}

}  // namespace

struct RegexSplitter::Impl {
  pcre2_code* code = nullptr;
  ~Impl() { pcre2_code_free(code); }
};

RegexSplitter::~RegexSplitter() = default;

absl::StatusOr<std::unique_ptr<RegexSplitter>> RegexSplitter::Create(std::string_view pattern) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  // UCP makes \s, \d, \w and case folding Unicode-aware, as in the Oniguruma regex that
  // Hugging Face tokenizers uses. NO_UTF_CHECK at match time: Encode validates input first.
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("split regex does not compile at offset ", error_offset,
                                                   ": ", Pcre2ErrorMessage(error_code)));
  }
  // JIT is an optimisation only; the interpreter gives the same matches.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  auto splitter = std::unique_ptr<RegexSplitter>(new RegexSplitter());
  splitter->impl_ = std::make_unique<Impl>();
  splitter->impl_->code = code;
  return splitter;
}

absl::Status RegexSplitter::Split(std::string_view text, std::vector<std::string_view>* pieces) const {
  pcre2_match_data* match = pcre2_match_data_create_from_pattern(impl_->code, nullptr);
  if (match == nullptr) return absl::ResourceExhaustedError("pcre2_match_data_create failed");
  const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  size_t emitted = 0;  // end of the last piece pushed
  absl::Status status;
  while (pos < text.size()) {
    const int rc = pcre2_match(impl_->code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, match, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      status = absl::InternalError(absl::StrCat("split regex failed: ", Pcre2ErrorMessage(rc)));
      break;
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
    const size_t start = ovector[0];
    const size_t end = ovector[1];
    if (start > emitted) pieces->push_back(text.substr(emitted, start - emitted));
    if (end > start) {
      pieces->push_back(text.substr(start, end - start));
      emitted = end;
      pos = end;
    } else {
      // An empty match (impossible with the Qwen3 pattern, possible with others): step one
      // code point so the loop always advances.
      emitted = start;
      pos = start + 1;
      while (pos < text.size() && (static_cast<uint8_t>(text[pos]) & 0xC0) == 0x80) ++pos;
    }
  }
  if (status.ok() && emitted < text.size()) pieces->push_back(text.substr(emitted));
  pcre2_match_data_free(match);
  return status;
}

}  // namespace moe::tokenizer
