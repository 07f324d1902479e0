// `moectl generate --router HOST:PORT`: the same command against a running cluster's public API.
#ifndef MOE_TOOLS_MOECTL_ROUTER_GENERATE_H_
#define MOE_TOOLS_MOECTL_ROUTER_GENERATE_H_

#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "moe/v1/generate.pb.h"
#include "tools/moectl/generation_flags.h"

namespace moe::moectl {

// The gRPC target for --router. HOST:PORT (IPv6 hosts in brackets: [::1]:50051) is required: gRPC
// would otherwise take a bare host to mean port 443. Targets with a scheme (unix:, dns:, ipv4:,
// ipv6:) pass through unchanged. INVALID_ARGUMENT with an example otherwise.
absl::StatusOr<std::string> ParseRouterAddress(absl::string_view address);

// The router's request for `flags`: chat messages or text, every sampling override that is set
// (unset ones stay absent so the router applies the model's defaults) and the limits.
moe::v1::GenerateRequest ToGenerateRequest(const GenerationFlags& flags);

// "router ADDRESS: UNAVAILABLE: <message>" plus a hint for the codes a user can act on. Never the
// numeric code.
std::string DescribeRouterError(const grpc::Status& status, const std::string& address);

// Streams the answer to stdout; on failure prints DescribeRouterError and throws CLI::RuntimeError.
// timeout_s <= 0: no deadline.
void GenerateViaRouter(const GenerationFlags& flags, const std::string& router, double timeout_s, bool json);

}  // namespace moe::moectl

#endif  // MOE_TOOLS_MOECTL_ROUTER_GENERATE_H_
