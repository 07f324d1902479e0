// The /metrics server: its bind address, threads enough that idle connections cannot starve a
// scrape, and the process metrics (moe_build_info carries the git revision).
#include "common/metrics/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/metrics/build_info.h"
#include "gtest/gtest.h"

namespace moe::metrics {
namespace {

// A TCP connection to 127.0.0.1:port (-1 on failure) whose reads give up after `timeout_seconds`.
int Connect(int port, int timeout_seconds) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  timeval timeout{timeout_seconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// GET /metrics; the whole response, or "" when the server does not answer within 5 s.
std::string Scrape(int port) {
  const int fd = Connect(port, 5);
  if (fd < 0) return "";
  const std::string request = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
  if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return "";
  }
  std::string response;
  char buffer[4096];
  for (ssize_t n; (n = read(fd, buffer, sizeof(buffer))) > 0;)
    response.append(buffer, static_cast<size_t>(n));
  close(fd);
  return response;
}

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
    const int fd = Connect(*port, 5);
    ASSERT_GE(fd, 0);
    idle.push_back(fd);
  }
  const std::string response = Scrape(*port);
  for (int fd : idle) close(fd);

  EXPECT_NE(response.find("200 OK"), std::string::npos) << response;
  EXPECT_NE(response.find(absl::StrCat("moe_build_info{backend=\"cpu\",revision=\"", BuildRevision(),
                                       "\",service=\"test_service\",version=\"", BuildVersion(), "\"} 1")),
            std::string::npos)
      << response;
  EXPECT_NE(response.find("moe_worker_price_per_hour_dollars 2.5"), std::string::npos) << response;
  EXPECT_EQ(StartExposer("127.0.0.1", 0).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace moe::metrics
