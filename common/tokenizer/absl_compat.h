// Debian's Abseil is built with its own absl::string_view (ABSL_OPTION_USE_STD_STRING_VIEW 0), so
// std::string_view does not convert implicitly to the absl string APIs and the heterogeneous
// lookup of absl hash maps. These conversions are free.
#ifndef MOE_COMMON_TOKENIZER_ABSL_COMPAT_H_
#define MOE_COMMON_TOKENIZER_ABSL_COMPAT_H_

#include <string_view>

#include "absl/strings/string_view.h"

namespace moe::tokenizer {

inline absl::string_view AbslView(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}
inline std::string_view StdView(absl::string_view s) {
  return std::string_view(s.data(), s.size());
}

}  // namespace moe::tokenizer

#endif  // MOE_COMMON_TOKENIZER_ABSL_COMPAT_H_
