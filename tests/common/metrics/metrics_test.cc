// The /metrics server: its bind address, threads enough that idle connections cannot starve a
// scrape, and the process metrics (moe_build_info carries the git revision).
#include "common/metrics/metrics.h"

#include <unistd.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/metrics/build_info.h"
#include "gtest/gtest.h"
#include "tests/util/http_get.h"

namespace moe::metrics {
namespace {

using ::moe::testing::ConnectLoopback;
using ::moe::testing::HttpGet;

TEST(MetricsTest, AnAddressThatIsNotLocalIsAnErrorNamingIt) {
  // 192.0.2.1 (TEST-NET-1) is no address of this host.
  auto port = StartExposer("192.0.2.1", 0);
  ASSERT_FALSE(port.ok());
  EXPECT_EQ(port.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(port.status().message().find("cannot serve /metrics on 192.0.2.1:0"), std::string::npos)
      << port.status();
}

TEST(MetricsTest, ServesBuildInfoWithTheRevisionOnLoopbackDespiteIdleConnections) {
  RegisterProcessMetrics("test_service", 2.5);
  auto port = StartExposer("127.0.0.1", 0);
  ASSERT_TRUE(port.ok()) << port.status();
  ASSERT_GT(*port, 0);

  // Connections that never send a request each hold a server thread until the request timeout.
  // With all but one thread held, the scrape must still be answered (at once, not after 10 s).
  std::vector<int> idle;
  for (int i = 0; i < kMetricsThreads - 1; ++i) {
    const int fd = ConnectLoopback(*port, 5);
    ASSERT_GE(fd, 0);
    idle.push_back(fd);
  }
  const absl::StatusOr<std::string> body = HttpGet(*port, "/metrics");
  for (int fd : idle) close(fd);

  ASSERT_TRUE(body.ok()) << body.status();
  const std::string& response = *body;
  EXPECT_NE(response.find(absl::StrCat("moe_build_info{backend=\"cpu\",revision=\"", BuildRevision(),
                                       "\",service=\"test_service\",version=\"", BuildVersion(), "\"} 1")),
            std::string::npos)
      << response;
  EXPECT_NE(response.find("moe_worker_price_per_hour_dollars 2.5"), std::string::npos) << response;
  EXPECT_EQ(StartExposer("127.0.0.1", 0).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace moe::metrics
