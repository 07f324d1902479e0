#include "common/transport/activation_transport.h"

#include "absl/strings/str_cat.h"

namespace moe::transport {

std::string MessageTag::DebugString() const {
  return absl::StrCat("{kind=", static_cast<int>(kind), " step=", step, " layer=", layer, " mb=", micro_batch,
                      " sender=", sender, "}");
}

}  // namespace moe::transport
