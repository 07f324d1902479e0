// Service flags: absl flags whose values can also come from environment variables: flag `foo_bar`
// reads MOE_FOO_BAR (a flag on the command line wins over its variable, which wins over the
// default), as deploy/k8s/README.md says.
#ifndef MOE_COMMON_RPC_FLAGS_H_
#define MOE_COMMON_RPC_FLAGS_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moe::rpc {

// The environment variable of flag `name`: "MOE_" + name in upper case (log_level: MOE_LOG_LEVEL).
std::string FlagEnvVariable(absl::string_view name);

// The binary's own flags: every absl flag except Abseil's (--flagfile, --fromenv, ...), by name.
std::vector<absl::CommandLineFlag*> ServiceFlags();

// The --help text: `usage`, then each of ServiceFlags() with its environment variable, help text
// and default, then --help and --version.
std::string HelpText(absl::string_view usage);

// Parses argv with absl flags after applying the environment: each service flag whose variable is
// set is first set from it. Before parsing, --help (or -h) prints HelpText(usage) and --version
// prints `version`, both to stdout, and exit 0. Exits 2 with a message naming the flag or variable
// on a bad value (as absl's parser does for command-line values). Returns positional args.
std::vector<char*> ParseFlagsWithEnv(int argc, char** argv, absl::string_view usage,
                                     absl::string_view version);

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
