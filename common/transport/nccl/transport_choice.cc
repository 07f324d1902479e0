#include "common/transport/nccl/transport_choice.h"

#include "absl/strings/str_cat.h"

namespace moe::transport {

bool BuiltWithNccl() {
#if MOE_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

absl::Status CheckTransportChoice(absl::string_view transport, bool device_is_cuda, bool have_nccl,
                                  absl::string_view flag) {
  if (transport == "ucx") return absl::OkStatus();
  if (transport != "nccl") {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": '", transport, "' is not a data plane; accepted: ucx, nccl (GPU workers)"));
  }
  if (!device_is_cuda) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": nccl moves GPU memory and needs --device cuda[:N]; with --device cpu use ucx"));
  }
  if (!have_nccl) {
    return absl::FailedPreconditionError(absl::StrCat(
        flag, ": nccl: this build has no NCCL (configure with -DMOE_WITH_NCCL=ON where NCCL is installed)"));
  }
  return absl::OkStatus();
}

}  // namespace moe::transport
