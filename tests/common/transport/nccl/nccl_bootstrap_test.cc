#include "common/transport/nccl/nccl_bootstrap.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe::transport {
namespace {

using ::testing::HasSubstr;

NcclBootstrap Sample() {
  NcclBootstrap b;
  b.generation = 7;
  b.peers = {3, 0, 12};
  for (size_t i = 0; i < kNcclUniqueIdBytes; ++i) b.unique_id.bytes[i] = static_cast<char>(i * 7);
  return b;
}

TEST(NcclBootstrapTest, EncodeDecodeRoundTrips) {
  const NcclBootstrap b = Sample();
  auto decoded = DecodeNcclBootstrap(EncodeNcclBootstrap(b));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, b);
}

TEST(NcclBootstrapTest, DecodeRejectsTruncatedAndForeignBytes) {
  std::string bytes = EncodeNcclBootstrap(Sample());
  auto truncated = DecodeNcclBootstrap(std::string_view(bytes).substr(0, bytes.size() - 1));
  EXPECT_EQ(truncated.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(truncated.status().message(), HasSubstr("for 3 ranks"));
  EXPECT_EQ(DecodeNcclBootstrap("short").status().code(), absl::StatusCode::kInvalidArgument);
  bytes[0] = 'X';
  EXPECT_THAT(DecodeNcclBootstrap(bytes).status().message(), HasSubstr("bad magic"));
}

TEST(NcclBootstrapTest, ValidateNamesTheField) {
  NcclBootstrap b = Sample();
  b.peers = {1, 2, 1};
  EXPECT_THAT(ValidateNcclBootstrap(b).message(), HasSubstr("bootstrap.peers[2]: peer 1 listed twice"));
  b.peers = {};
  EXPECT_THAT(ValidateNcclBootstrap(b).message(), HasSubstr("bootstrap.peers: empty"));
  b = Sample();
  b.generation = 0;
  EXPECT_THAT(ValidateNcclBootstrap(b).message(), HasSubstr("bootstrap.generation"));
  b = Sample();
  b.peers[1] = -4;
  EXPECT_THAT(ValidateNcclBootstrap(b).message(), HasSubstr("bootstrap.peers[1]: negative"));
  // A decoded bootstrap is validated too.
  EXPECT_EQ(DecodeNcclBootstrap(EncodeNcclBootstrap(b)).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moe::transport
