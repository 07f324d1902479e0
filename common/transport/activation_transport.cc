#include "common/transport/activation_transport.h"

#include "absl/strings/str_cat.h"

namespace moe::transport {

std::string MessageTag::DebugString() const {
  return absl::StrCat("{kind=", static_cast<int>(kind), " step=", step, " layer=", layer, " mb=", micro_batch,
                      " sender=", sender, "}");
}

std::string_view DropReasonName(DropReason reason) {
  switch (reason) {
    case DropReason::kUnknownSender:
      return "unknown_sender";
    case DropReason::kBadSecret:
      return "bad_secret";
    case DropReason::kTooLarge:
      return "too_large";
    case DropReason::kQueueFull:
      return "queue_full";
    case DropReason::kStepWindow:
      return "step_window";
    case DropReason::kMalformed:
      return "malformed";
  }
  return "unknown";
}

std::vector<std::string> DropReasonNames() {
  std::vector<std::string> names;
  for (int r = 0; r < kNumDropReasons; ++r) names.emplace_back(DropReasonName(static_cast<DropReason>(r)));
  return names;
}

}  // namespace moe::transport
