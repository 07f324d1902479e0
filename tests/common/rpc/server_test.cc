// GrpcServer: a taken port is a startup error (gRPC's default SO_REUSEPORT would let two servers
// share it silently).
#include "common/rpc/server.h"

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace moe::rpc {
namespace {

TEST(GrpcServerTest, ASecondServerOnATakenPortFailsNamingTheAddress) {
  auto first = GrpcServer::Start("127.0.0.1:0", {});
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string taken = absl::StrCat("127.0.0.1:", (*first)->port());

  auto second = GrpcServer::Start(taken, {});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(second.status().message(),
            absl::StrCat("cannot listen on ", taken,
                         ": the port is taken by another process or the host is not local"));
}

TEST(GrpcServerTest, ThePortIsFreeAgainAfterShutdown) {
  auto first = GrpcServer::Start("127.0.0.1:0", {});
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string address = absl::StrCat("127.0.0.1:", (*first)->port());
  (*first)->Shutdown(absl::ZeroDuration());
  auto again = GrpcServer::Start(address, {});
  EXPECT_TRUE(again.ok()) << again.status();
}

}  // namespace
}  // namespace moe::rpc
