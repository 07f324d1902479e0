// The one mapping between absl::Status (used everywhere inside) and grpc::Status (at the edge).
// The codes are the same numbers; messages pass through.
#ifndef MOE_COMMON_RPC_STATUS_H_
#define MOE_COMMON_RPC_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace moe::rpc {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace moe::rpc

#endif  // MOE_COMMON_RPC_STATUS_H_
