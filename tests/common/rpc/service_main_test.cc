// What a user sees of every service binary: --help lists each flag with its environment variable,
// --version prints the git revision, log lines carry time and level, --log_level (or
// MOE_LOG_LEVEL) sets the minimum level, and a taken --listen port fails startup naming it.
#include <sys/wait.h>
#include <fstream>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/metrics/build_info.h"
#include "common/rpc/server.h"
#include "gtest/gtest.h"
#include "tests/services/process_helper.h"

namespace moe::rpc {
namespace {

struct ProcessRun {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

ProcessRun RunBinary(const std::string& name, const std::vector<std::string>& args) {
  static int run_count = 0;
  const std::string log =
      absl::StrCat(::testing::TempDir(), "service_main_test_", getpid(), "_", ++run_count, ".log");
  auto child = moe::testing::ChildProcess::Start(moe::testing::BinaryPath(name), args, log);
  if (!child.ok()) return {};
  const std::optional<int> status = (*child)->Wait(absl::Seconds(30));
  ProcessRun run;
  if (status.has_value() && WIFEXITED(*status)) run.exit_code = WEXITSTATUS(*status);
  run.output = (*child)->Log();
  std::remove(log.c_str());
  return run;
}

// The test program with /metrics on a free loopback port (and --insecure unless `insecure` is
// false: these tests are about something else than mTLS).
ProcessRun RunProgram(std::vector<std::string> args, bool insecure = true) {
  args.insert(args.begin(), {"--metrics_listen=127.0.0.1", "--metrics_port=0"});
  if (insecure) args.push_back("--insecure");
  return RunBinary("service_main_test_program", args);
}

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(ServiceMainTest, HelpListsEveryFlagWithItsEnvironmentVariable) {
  const ProcessRun run = RunProgram({"--help"});
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_TRUE(Contains(run.output, "moe-test-service: a test.\n\nUsage: x\n")) << run.output;
  EXPECT_TRUE(Contains(run.output,
                       "  --log_level  (env MOE_LOG_LEVEL)\n      minimum level of the log lines on stderr: "
                       "debug, info, warning or error; default: info\n"))
      << run.output;
  EXPECT_TRUE(Contains(run.output, "  --serve  (env MOE_SERVE)\n")) << run.output;
  for (const char* flag : {"--listen  (env MOE_LISTEN)", "--metrics_listen  (env MOE_METRICS_LISTEN)",
                           "--metrics_port  (env MOE_METRICS_PORT)",
                           "--worker_price_per_hour  (env MOE_WORKER_PRICE_PER_HOUR)", "--version\n"}) {
    EXPECT_TRUE(Contains(run.output, flag)) << flag << " missing from:\n" << run.output;
  }
  EXPECT_FALSE(Contains(run.output, "flagfile")) << run.output;
}

TEST(ServiceMainTest, VersionPrintsTheVersionAndGitRevision) {
  const ProcessRun run = RunProgram({"--version"});
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_EQ(run.output, absl::StrCat("moe-test-service ", metrics::BuildVersion(), " (revision ",
                                     metrics::BuildRevision(), ")\n"));
  EXPECT_NE(metrics::BuildRevision(), "unknown");
}

TEST(ServiceMainTest, LogLinesCarryUtcTimeAndLevel) {
  const ProcessRun run = RunProgram({});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  const std::regex info(
      R"((^|\n)\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z INFO service_main_test_program \d+ )"
      R"(service_main_test_program\.cc:\d+\] an info line\n)");
  EXPECT_TRUE(std::regex_search(run.output, info)) << run.output;
  EXPECT_TRUE(Contains(run.output, "Z WARNING service_main_test_program ")) << run.output;
  EXPECT_FALSE(Contains(run.output, "a debug line")) << run.output;
}

TEST(ServiceMainTest, LogLevelErrorSuppressesInfoAndWarningLines) {
  const ProcessRun run = RunProgram({"--log_level=error"});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_FALSE(Contains(run.output, "an info line")) << run.output;
  EXPECT_FALSE(Contains(run.output, "a warning line")) << run.output;
  EXPECT_TRUE(Contains(run.output, "an error line")) << run.output;
}

TEST(ServiceMainTest, LogLevelDebugWritesDebugLines) {
  const ProcessRun run = RunProgram({"--log_level=debug"});
  EXPECT_TRUE(Contains(run.output, "a debug line")) << run.output;
}

TEST(ServiceMainTest, EnvironmentVariableSetsAFlagAndTheCommandLineWins) {
  ASSERT_EQ(setenv("MOE_LOG_LEVEL", "error", 1), 0);
  const ProcessRun from_env = RunProgram({});
  const ProcessRun overridden = RunProgram({"--log_level=info"});
  unsetenv("MOE_LOG_LEVEL");
  EXPECT_FALSE(Contains(from_env.output, "an info line")) << from_env.output;
  EXPECT_TRUE(Contains(overridden.output, "an info line")) << overridden.output;
}

TEST(ServiceMainTest, AnUnknownLogLevelExitsTwoNamingTheFlag) {
  const ProcessRun run = RunProgram({"--log_level=loud"});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_TRUE(Contains(run.output, "--log_level: 'loud' is not one of debug, info, warning, error"))
      << run.output;
}

TEST(ServiceMainTest, WithoutTlsFlagsOrInsecureAServiceRefusesToStart) {
  const ProcessRun run = RunProgram({"--serve", "--listen=127.0.0.1:0"}, /*insecure=*/false);
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_TRUE(Contains(run.output,
                       "pass --tls_ca, --tls_cert and --tls_key (or MOE_TLS_CA, MOE_TLS_CERT, "
                       "MOE_TLS_KEY), or --insecure"))
      << run.output;
}

TEST(ServiceMainTest, TheRouterWithoutTlsFlagsOrInsecureRefusesToStart) {
  const ProcessRun run = RunBinary("moe-router", {"--metrics_listen=127.0.0.1", "--metrics_port=0",
                                                  "--model=/nonexistent", "--attention_workers=127.0.0.1:1"});
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_TRUE(Contains(run.output, "pass --tls_ca, --tls_cert and --tls_key")) << run.output;
}

// Where the router's attention workers come from (docs/operations.md#scaling): bad flags or a bad
// file fail start-up naming the flag (and the file's line).
TEST(ServiceMainTest, TheRouterRefusesBadAttentionWorkerSourcesNamingTheFlag) {
  const std::string bad_file = absl::StrCat(::testing::TempDir(), "service_main_test_workers_", getpid());
  { std::ofstream(bad_file) << "127.0.0.1:1\n127.0.0.1\n"; }
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--attention_workers=127.0.0.1:1", "--attention_workers_dns=a:1"},
       "exactly one of --attention_workers, --attention_workers_file and --attention_workers_dns is "
       "required"},
      {{}, "exactly one of --attention_workers"},
      {{"--attention_workers_dns=attention"}, "--attention_workers_dns: 'attention' is not NAME:PORT"},
      {{"--attention_workers_file=" + bad_file},
       "--attention_workers_file " + bad_file + " line 2: '127.0.0.1'"},
      {{"--attention_workers_file=/nonexistent/workers"},
       "--attention_workers_file /nonexistent/workers: cannot be read"},
      {{"--attention_workers=127.0.0.1:1", "--discovery_interval_ms=0"},
       "--discovery_interval_ms must be > 0"},
  };
  for (const auto& [flags, message] : cases) {
    std::vector<std::string> args = {"--metrics_listen=127.0.0.1", "--metrics_port=0", "--listen=127.0.0.1:0",
                                     "--model=/nonexistent", "--insecure"};
    args.insert(args.end(), flags.begin(), flags.end());
    const ProcessRun run = RunBinary("moe-router", args);
    EXPECT_NE(run.exit_code, 0) << message << "\n" << run.output;
    EXPECT_TRUE(Contains(run.output, message)) << message << "\n" << run.output;
  }
  std::remove(bad_file.c_str());
}

TEST(ServiceMainTest, AMissingCertificateFileFailsStartupNamingTheFlagAndPath) {
  const ProcessRun run = RunProgram(
      {"--tls_ca=/nonexistent/ca.crt", "--tls_cert=/nonexistent/tls.crt", "--tls_key=/nonexistent/tls.key"},
      /*insecure=*/false);
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_TRUE(Contains(run.output, "--tls_ca: cannot read '/nonexistent/ca.crt': No such file or directory"))
      << run.output;
}

TEST(ServiceMainTest, InsecureLogsAWarningThatTheControlPlaneIsUnauthenticated) {
  const ProcessRun run = RunProgram({});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_TRUE(Contains(run.output, "WARNING: --insecure: the cluster's control plane is UNAUTHENTICATED"))
      << run.output;
}

TEST(ServiceMainTest, ATakenListenPortFailsStartupNamingTheAddress) {
  auto holder = GrpcServer::Start("127.0.0.1:0", {});
  ASSERT_TRUE(holder.ok()) << holder.status();
  const std::string taken = absl::StrCat("127.0.0.1:", (*holder)->port());
  const ProcessRun run = RunProgram({"--serve", "--listen=" + taken});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_TRUE(Contains(run.output, absl::StrCat("cannot listen on ", taken))) << run.output;
}

// The real binaries answer --help with their own flags (they used to print "No flags matched").
TEST(ServiceMainTest, EachServiceBinaryListsItsOwnFlagsInHelp) {
  std::vector<std::pair<std::string, std::string>> expected = {
      {"moe-router", "  --attention_workers  (env MOE_ATTENTION_WORKERS)\n"}};
#ifdef MOE_TEST_WORKER_BINARIES  // the workers are built with UCX only
  expected.push_back(
      {"moe-attention-worker",
       "  --transport  (env MOE_TRANSPORT)\n      data plane to the expert workers: ucx (any --device); nccl "
       "(--device cuda, a build with NCCL, the expert workers on nccl too; "
       "docs/data-plane.md#nccl-rendezvous); default: ucx\n"});
  expected.push_back({"moe-expert-worker", "  --num_expert_workers  (env MOE_NUM_EXPERT_WORKERS)\n"});
#endif
  for (const auto& [binary, line] : expected) {
    const ProcessRun run = RunBinary(binary, {"--help"});
    EXPECT_EQ(run.exit_code, 0) << binary;
    EXPECT_TRUE(Contains(run.output, line)) << binary << ":\n" << run.output;
    EXPECT_TRUE(Contains(run.output, "  --log_level  (env MOE_LOG_LEVEL)\n")) << binary << ":\n"
                                                                              << run.output;
  }
}

#ifdef MOE_TEST_WORKER_BINARIES
// --device (MOE_DEVICE) is checked at start, before the model is read: a spelling ParseDeviceSpec
// refuses, or a device this machine (or build) lacks, is the worker's Fail with the flag named and
// exit 1, never a crash and never a silent fallback to the CPU.
TEST(ServiceMainTest, WorkersRefuseABadOrMissingDeviceNamingTheFlag) {
  // /metrics starts before the flags are checked: on a free port.
  const auto run = [](const std::string& binary, std::vector<std::string> args) {
    args.insert(args.begin(), {"--metrics_listen=127.0.0.1", "--metrics_port=0", "--model=/nonexistent"});
    args.push_back("--insecure");
    return RunBinary(binary, args);
  };
  for (const std::string binary : {"moe-attention-worker", "moe-expert-worker"}) {
    const ProcessRun help = RunBinary(binary, {"--help"});
    EXPECT_TRUE(Contains(help.output, "  --device  (env MOE_DEVICE)\n")) << binary << ":\n" << help.output;

    const ProcessRun bad = run(binary, {"--device=gpu"});
    EXPECT_EQ(bad.exit_code, 1) << binary << ":\n" << bad.output;
    EXPECT_TRUE(Contains(bad.output, "INVALID_ARGUMENT: --device: 'gpu' is not a device")) << binary << ":\n"
                                                                                           << bad.output;

    // cuda:7: no such device here (no GPU, or fewer than 8, or no CUDA in the build).
    const ProcessRun missing = run(binary, {"--device=cuda:7"});
    EXPECT_EQ(missing.exit_code, 1) << binary << ":\n" << missing.output;
    EXPECT_TRUE(Contains(missing.output, "FAILED_PRECONDITION: --device")) << binary << ":\n"
                                                                           << missing.output;
    EXPECT_TRUE(Contains(missing.output, "cuda:7")) << binary << ":\n" << missing.output;

    // The environment variable goes through the same check.
    ASSERT_EQ(setenv("MOE_DEVICE", "cuda:x", 1), 0);
    const ProcessRun from_env = run(binary, {});
    unsetenv("MOE_DEVICE");
    EXPECT_EQ(from_env.exit_code, 1) << binary << ":\n" << from_env.output;
    EXPECT_TRUE(Contains(from_env.output, "--device: 'cuda:x' is not a device")) << binary << ":\n"
                                                                                 << from_env.output;
  }
}

// --transport (MOE_TRANSPORT): nccl with --device cpu and an unknown data plane are refused at start,
// naming the flag (transport::CheckTransportChoice; the GPU cases are its unit test's).
TEST(ServiceMainTest, WorkersRefuseATransportTheirDeviceCannotUse) {
  const auto run = [](const std::string& binary, std::vector<std::string> args) {
    args.insert(args.begin(), {"--metrics_listen=127.0.0.1", "--metrics_port=0", "--model=/nonexistent"});
    args.push_back("--insecure");
    return RunBinary(binary, args);
  };
  for (const std::string binary : {"moe-attention-worker", "moe-expert-worker"}) {
    const ProcessRun cpu = run(binary, {"--transport=nccl", "--device=cpu"});
    EXPECT_EQ(cpu.exit_code, 1) << binary << ":\n" << cpu.output;
    EXPECT_TRUE(
        Contains(cpu.output, "INVALID_ARGUMENT: --transport: nccl moves GPU memory and needs --device cuda"))
        << binary << ":\n"
        << cpu.output;
    const ProcessRun other = run(binary, {"--transport=rdma"});
    EXPECT_EQ(other.exit_code, 1) << binary << ":\n" << other.output;
    EXPECT_TRUE(Contains(other.output, "--transport: 'rdma' is not a data plane; accepted: ucx, nccl"))
        << binary << ":\n"
        << other.output;
  }
}

// --ucx_poll_spin_us (MOE_UCX_POLL_SPIN_US), defined once for both workers
// (common/rpc/worker_main/data_plane_flags.h): a value out of range is refused at start naming the
// flag, and both list it in --help.
TEST(ServiceMainTest, WorkersRefuseAPollSpinOutOfRangeNamingTheFlag) {
  const auto run = [](const std::string& binary, std::vector<std::string> args) {
    args.insert(args.begin(), {"--metrics_listen=127.0.0.1", "--metrics_port=0", "--model=/nonexistent"});
    // Whatever the order of the checks, the attention worker's other required flag is right.
    if (binary == "moe-attention-worker") args.push_back("--expert_workers=127.0.0.1:1");
    args.push_back("--insecure");
    return RunBinary(binary, args);
  };
  for (const std::string binary : {"moe-attention-worker", "moe-expert-worker"}) {
    const ProcessRun help = RunBinary(binary, {"--help"});
    EXPECT_TRUE(Contains(help.output, "  --ucx_poll_spin_us  (env MOE_UCX_POLL_SPIN_US)\n"))
        << binary << ":\n"
        << help.output;
    EXPECT_TRUE(Contains(help.output, "  --ucx_tls  (env MOE_UCX_TLS)\n")) << binary << ":\n" << help.output;
    const ProcessRun bad = run(binary, {"--ucx_poll_spin_us=10001"});
    EXPECT_EQ(bad.exit_code, 1) << binary << ":\n" << bad.output;
    EXPECT_TRUE(
        Contains(bad.output, "INVALID_ARGUMENT: --ucx_poll_spin_us must be auto or an integer in [0, 10000]"))
        << binary << ":\n"
        << bad.output;
    ASSERT_EQ(setenv("MOE_UCX_POLL_SPIN_US", "fast", 1), 0);
    const ProcessRun from_env = run(binary, {});
    unsetenv("MOE_UCX_POLL_SPIN_US");
    EXPECT_EQ(from_env.exit_code, 1) << binary << ":\n" << from_env.output;
    EXPECT_TRUE(Contains(from_env.output, "--ucx_poll_spin_us must be auto or an integer"))
        << binary << ":\n"
        << from_env.output;
  }
}
#endif

}  // namespace
}  // namespace moe::rpc
