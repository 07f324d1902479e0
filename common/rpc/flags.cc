#include "common/rpc/flags.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>

#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/rpc/server.h"

namespace moe::rpc {

std::vector<char*> ParseFlagsWithEnv(int argc, char** argv, const std::string& usage,
                                     const std::vector<std::pair<std::string, std::string>>& env_flags) {
  absl::SetProgramUsageMessage(usage);
  for (const auto& [flag, variable] : env_flags) {
    const char* value = std::getenv(variable.c_str());
    if (value == nullptr) continue;
    absl::CommandLineFlag* handle = absl::FindCommandLineFlag(flag);
    std::string error;
    if (handle == nullptr || !handle->ParseFrom(value, &error)) {
      std::cerr << argv[0] << ": " << variable << "='" << value << "' is not a valid --" << flag << ": "
                << error << std::endl;
      std::exit(2);
    }
  }
  return absl::ParseCommandLine(argc, argv);
}

namespace {
sigset_t TerminationSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  return signals;
}
}  // namespace

void BlockTerminationSignals() {
  const sigset_t signals = TerminationSignals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
}

int WaitForTerminationSignal() {
  const sigset_t signals = TerminationSignals();
  int signal = 0;
  sigwait(&signals, &signal);
  return signal;
}

absl::StatusOr<int> ResolveRank(int rank_flag, bool from_hostname) {
  if (from_hostname) return RankFromHostname();
  if (rank_flag < 0) return absl::InvalidArgumentError(absl::StrCat("--rank must be >= 0, got ", rank_flag));
  return rank_flag;
}

absl::StatusOr<int> RankFromHostname() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return absl::InternalError("gethostname failed");
  const std::string host(name);
  const size_t dash = host.rfind('-');
  int rank = -1;
  if (dash == std::string::npos || !absl::SimpleAtoi(host.substr(dash + 1), &rank) || rank < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--rank_from_hostname: host name '", host, "' does not end in -<ordinal>"));
  }
  return rank;
}

absl::StatusOr<std::vector<std::string>> ParseAddressList(const std::string& flag, const std::string& value) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
    std::string address(part);
    if (absl::Status s = ValidateHostPort(flag, address); !s.ok()) return s;
    out.push_back(address);
  }
  return out;
}

}  // namespace moe::rpc
