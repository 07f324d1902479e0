// What --version and moe_build_info report. The tests are built from a git checkout (CI clones
// the repository), so the revision must be git's, not the "unknown" fallback.
#include "common/metrics/build_info.h"

#include <regex>
#include <string>

#include "gtest/gtest.h"

namespace moe::metrics {
namespace {

TEST(BuildInfoTest, VersionIsTheProjectVersion) {
  EXPECT_EQ(BuildVersion(), MOE_EXPECTED_VERSION);
}

TEST(BuildInfoTest, RevisionIsGitDescribeOfTheCheckout) {
  const std::string revision(BuildRevision());
  EXPECT_NE(revision, "unknown");
  // `git describe --always --dirty`: an abbreviated hash, or <tag>-<n>-g<hash>, maybe -dirty.
  EXPECT_TRUE(std::regex_match(
      revision, std::regex(R"(([0-9a-f]{7,40}|.+-\d+-g[0-9a-f]{7,40}|v?\d+\.\d+.*)(-dirty)?)")))
      << revision;
}

}  // namespace
}  // namespace moe::metrics
