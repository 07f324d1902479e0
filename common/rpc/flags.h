// Service flags: absl flags whose defaults can come from MOE_* environment variables (a flag on the
// command line wins over its variable, which wins over the default), as deploy/k8s/README.md says.
#ifndef MOE_COMMON_RPC_FLAGS_H_
#define MOE_COMMON_RPC_FLAGS_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace moe::rpc {

// Parses argv with absl flags after applying the environment: for each (flag name, variable) pair
// whose variable is set, the flag is first set from it. Exits with a message naming the flag or
// variable on a bad value (as absl's parser does for command-line values). Returns positional args.
std::vector<char*> ParseFlagsWithEnv(int argc, char** argv, const std::string& usage,
                                     const std::vector<std::pair<std::string, std::string>>& env_flags);

// Blocks SIGTERM and SIGINT in the calling thread (call first in main, before any thread starts,
// so every thread inherits the mask and none dies of them); WaitForTerminationSignal() then takes
// them synchronously, letting main drain and exit 0.
void BlockTerminationSignals();
// Waits for SIGTERM or SIGINT (blocked by BlockTerminationSignals) and returns which.
int WaitForTerminationSignal();

// A worker's rank: --rank, or the host name's ordinal with --rank_from_hostname.
absl::StatusOr<int> ResolveRank(int rank_flag, bool from_hostname);

// The trailing "-<ordinal>" of this host's name (StatefulSet pods: "moe-expert-3" -> 3).
absl::StatusOr<int> RankFromHostname();

// Splits "a:1,b:2" into host:port strings, validating each. INVALID_ARGUMENT naming `flag`.
absl::StatusOr<std::vector<std::string>> ParseAddressList(const std::string& flag, const std::string& value);

}  // namespace moe::rpc

#endif  // MOE_COMMON_RPC_FLAGS_H_
