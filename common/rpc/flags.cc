#include "common/rpc/flags.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>

#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/rpc/server.h"

namespace moe::rpc {

std::string FlagEnvVariable(absl::string_view name) {
  return absl::StrCat("MOE_", absl::AsciiStrToUpper(name));
}

std::vector<absl::CommandLineFlag*> ServiceFlags() {
  std::vector<absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    // Abseil's own flags are defined in its sources (Filename "./absl/flags/parse.cc" on Debian).
    if (absl::StrContains(flag->Filename(), "absl/")) continue;
    flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(), [](const absl::CommandLineFlag* a, const absl::CommandLineFlag* b) {
    return a->Name() < b->Name();
  });
  return flags;
}

std::string HelpText(absl::string_view usage) {
  std::string text = absl::StrCat(
      usage, "\n\nFlags (each also read from its environment variable; the command line wins):\n");
  for (const absl::CommandLineFlag* flag : ServiceFlags()) {
    absl::StrAppend(&text, "  --", flag->Name(), "  (env ", FlagEnvVariable(flag->Name()), ")\n      ",
                    flag->Help(), "; default: ", flag->DefaultValue().empty() ? "\"\"" : flag->DefaultValue(),
                    "\n");
  }
  absl::StrAppend(&text, "  --help\n      print this text and exit\n",
                  "  --version\n      print the version and git revision and exit\n");
  return text;
}

std::vector<char*> ParseFlagsWithEnv(int argc, char** argv, absl::string_view usage,
                                     absl::string_view version) {
  absl::SetProgramUsageMessage(usage);
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg == "--help" || arg == "-help" || arg == "-h") {
      std::cout << HelpText(usage) << std::flush;
      std::exit(0);
    }
    if (arg == "--version" || arg == "-version") {
      std::cout << version << std::endl;
      std::exit(0);
    }
  }
  for (absl::CommandLineFlag* flag : ServiceFlags()) {
    const std::string variable = FlagEnvVariable(flag->Name());
    const char* value = std::getenv(variable.c_str());
    if (value == nullptr) continue;
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      std::cerr << argv[0] << ": " << variable << "='" << value << "' is not a valid --" << flag->Name()
                << ": " << error << std::endl;
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
