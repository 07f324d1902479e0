#include "common/metrics/build_info.h"

// Generated at build time by cmake/MoeBuildRevision.cmake: #define MOE_REVISION "...".
#include "common/metrics/build_revision.h"

#ifndef MOE_VERSION
#error "MOE_VERSION is defined by common/metrics/CMakeLists.txt"
#endif

namespace moe::metrics {

absl::string_view BuildVersion() {
  return MOE_VERSION;
}

absl::string_view BuildRevision() {
  return MOE_REVISION;
}

}  // namespace moe::metrics
