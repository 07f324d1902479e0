#include "common/kernels/device_spec.h"

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace moe::kernels {

std::string DeviceSpec::ToString() const {
  return kind == Kind::kCpu ? std::string("cpu") : absl::StrCat("cuda:", ordinal);
}

absl::StatusOr<DeviceSpec> ParseDeviceSpec(absl::string_view text, absl::string_view flag) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": '", text, "' is not a device (", why, "; expected cpu, cuda or cuda:N)"));
  };
  if (text == "cpu") return DeviceSpec{};
  if (text == "cuda") return DeviceSpec{DeviceSpec::Kind::kCuda, 0};
  constexpr absl::string_view kPrefix = "cuda:";
  if (text.substr(0, kPrefix.size()) != kPrefix) return bad("unknown device kind");
  const absl::string_view digits = text.substr(kPrefix.size());
  if (digits.empty()) return bad("missing device index after 'cuda:'");
  for (char c : digits) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c)))
      return bad("the device index is not a decimal number");
  }
  int ordinal = 0;
  if (digits.size() > 4 || !absl::SimpleAtoi(digits, &ordinal) || ordinal > 1023) {
    return bad("the device index is out of range [0, 1023]");
  }
  return DeviceSpec{DeviceSpec::Kind::kCuda, ordinal};
}

}  // namespace moe::kernels
