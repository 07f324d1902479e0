#include "services/attention_worker/generate_stream.h"

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace moe::services {
namespace {

TEST(EngineErrorToGrpcStatusTest, UnavailablePassesThroughWithItsMessage) {
  const grpc::Status status = EngineErrorToGrpcStatus(absl::UnavailableError("peer 1001 is gone"));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(status.error_message(), "peer 1001 is gone");
}

TEST(EngineErrorToGrpcStatusTest, AnyOtherCodeIsInternalKeepingTheEngineCodeInTheMessage) {
  const grpc::Status status =
      EngineErrorToGrpcStatus(absl::InvalidArgumentError("combine: 3 groups, expected 4"));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(status.error_message(), "INVALID_ARGUMENT: combine: 3 groups, expected 4");
}

TEST(EngineErrorToGrpcStatusTest, AMessageThatMentionsUnavailableDoesNotMakeItRetryable) {
  const grpc::Status status = EngineErrorToGrpcStatus(absl::InternalError("expert said UNAVAILABLE"));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL);
}

}  // namespace
}  // namespace moe::services
