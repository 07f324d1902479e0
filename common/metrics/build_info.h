// What this binary was built from: reported by --version and by the moe_build_info metric.
#ifndef MOE_COMMON_METRICS_BUILD_INFO_H_
#define MOE_COMMON_METRICS_BUILD_INFO_H_

#include "absl/strings/string_view.h"

namespace moe::metrics {

// The project version (CMake's PROJECT_VERSION), e.g. "0.1.0".
absl::string_view BuildVersion();

// The source revision: `git describe --always --dirty` of the source tree, taken at every build
// (cmake/MoeBuildRevision.cmake); the CMake variable MOE_REVISION when set (builds from a tree
// without .git, e.g. the Docker image); "unknown" when neither is available.
absl::string_view BuildRevision();

}  // namespace moe::metrics

#endif  // MOE_COMMON_METRICS_BUILD_INFO_H_
