#include "common/transport/ucx/ucx_options.h"

#include <cstdint>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace moe::transport {

absl::StatusOr<std::optional<absl::Duration>> ParsePollSpinFlag(absl::string_view value,
                                                                absl::string_view flag) {
  if (value == "auto") return std::nullopt;
  const int64_t max_us = absl::ToInt64Microseconds(UcxOptions::kMaxPollSpin);
  int64_t us = -1;
  if (!absl::SimpleAtoi(value, &us) || us < 0 || us > max_us) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " must be auto or an integer in [0, ", max_us,
                                                   "] (microseconds), got \"", value, "\""));
  }
  return absl::Microseconds(us);
}

}  // namespace moe::transport
