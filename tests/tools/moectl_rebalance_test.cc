// `moectl cluster rebalance` against a real local cluster (`moectl cluster up`) on the skewed tiny
// model: applied while 16 greedy streams run, no request fails, every stream is embedded mode's token
// for token (ids, logprobs and text), and the measured load ratio falls; --dry-run changes nothing;
// a cluster without an extra-expert budget is refused with a message naming the flag.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/tools/generate_json.h"
#include "tests/util/test_models.h"

namespace moe {
namespace {

using ::moe::testing::FirstTokenDifference;
using ::moe::testing::GenerateJson;
using ::moe::testing::ParseGenerateJson;
using ::testing::HasSubstr;

struct Result {
  int exit_code = -1;
  bool crashed = false;
  std::string out;
  std::string err;
};

// Runs the real moectl with `args` (already quoted).
Result RunMoectl(const std::string& args) {
  const std::string dir = testing::MakeTempDir("moectl-rebalance-run");
  const std::string out = dir + "/out", err = dir + "/err";
  const std::string cmd =
      std::string(MOE_BINARY_DIR_DEFAULT) + "/bin/moectl " + args + " </dev/null >" + out + " 2>" + err;
  const int status = std::system(cmd.c_str());
  Result r;
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  r.crashed = WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) >= 128);
  std::ifstream o(out), e(err);
  r.out.assign(std::istreambuf_iterator<char>(o), {});
  r.err.assign(std::istreambuf_iterator<char>(e), {});
  return r;
}

bool PortFree(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

// A base port with `count` free ports from it and from it + 1000 (the default metrics ports).
int FreePortBlock(int count) {
  std::mt19937 rng(static_cast<unsigned>(getpid()) * 7919u + static_cast<unsigned>(time(nullptr)));
  for (int attempt = 0; attempt < 200; ++attempt) {
    const int base = 10000 + static_cast<int>(rng() % 21000);
    bool ok = true;
    for (int i = 0; i < count && ok; ++i) ok = PortFree(base + i) && PortFree(base + 1000 + i);
    if (ok) return base;
  }
  ADD_FAILURE() << "no free port block";
  return -1;
}

// A detached `moectl cluster up`, stopped at the end of the test.
struct LocalCluster {
  std::string state = testing::MakeTempDir("moectl-rebalance-state");
  int port = FreePortBlock(5);
  Result up;
  ~LocalCluster() { RunMoectl("cluster down --state-dir " + state); }
  std::string router() const { return "127.0.0.1:" + std::to_string(port); }
};

// The "measured load ratio" a rebalance run printed (-1 if none).
double MeasuredRatio(const std::string& out) {
  std::smatch m;
  if (!std::regex_search(out, m,
                         std::regex(R"(measured load ratio \(max/mean rows per expert worker\): ([0-9.]+))")))
    return -1;
  return std::stod(m[1]);
}

TEST(MoectlRebalanceTest, RebalancingMidStreamKeepsOutputsFailsNothingAndLowersTheLoadRatio) {
  const std::string& model = testing::TestModelDir("tiny+skewed", "bf16");
  LocalCluster cluster;
  cluster.up = RunMoectl("cluster up --detach --model " + model +
                         " --attention-workers 1 --expert-workers 2" + " --extra-expert-budget 1GiB --port " +
                         std::to_string(cluster.port) + " --state-dir " + cluster.state);
  ASSERT_EQ(cluster.up.exit_code, 0) << cluster.up.err;

  constexpr int kStreams = 16;
  const std::vector<std::string> prompts = {"Hello", "The weather today", "Count with me: one two",
                                            "Write a poem about the sea"};
  const std::string sampling = " --max-tokens 600 --temperature 0 --ignore-eos --json";
  std::vector<Result> streams(kStreams);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      streams[static_cast<size_t>(i)] =
          RunMoectl("generate --router " + cluster.router() + " --prompt '" +
                    prompts[static_cast<size_t>(i) % prompts.size()] + "'" + sampling);
    });
  }
  const std::string rebalance = "cluster rebalance --window 1.5 --state-dir " + cluster.state;
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const Result before = RunMoectl(rebalance + " --dry-run");
  const Result again = RunMoectl(rebalance + " --dry-run");
  const Result applied = RunMoectl(rebalance);
  const Result after = RunMoectl(rebalance + " --dry-run");
  for (std::thread& t : threads) t.join();

  ASSERT_EQ(before.exit_code, 0) << before.err;
  EXPECT_THAT(before.out, HasSubstr("plan: placement version 1,"));
  EXPECT_THAT(before.out, HasSubstr("dry run: nothing changed"));
  // The dry run changed nothing: the next run still plans version 1 from no extra experts.
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_THAT(again.out, HasSubstr("plan: placement version 1,"));
  EXPECT_THAT(again.out, HasSubstr("(now [])"));
  EXPECT_THAT(again.out, ::testing::Not(HasSubstr("(now [0")));
  ASSERT_EQ(applied.exit_code, 0) << applied.err;
  EXPECT_THAT(applied.out, HasSubstr("applied: placement version 1 on 1 attention and 2 expert workers"));
  // Measured while the streams still ran (a window without rows is refused).
  ASSERT_EQ(after.exit_code, 0) << after.err
                                << " (the streams ended before the measurement after the switch?)";
  EXPECT_THAT(after.out, HasSubstr("plan: placement version 2,"));
  const double ratio_before = MeasuredRatio(before.out), ratio_after = MeasuredRatio(after.out);
  std::cout << "measured load ratio (max/mean rows per expert worker): " << ratio_before << " before, "
            << ratio_after << " after the switch" << std::endl;
  EXPECT_GT(ratio_before, 1.05) << before.out;
  EXPECT_GT(ratio_after, 0.99) << after.out;
  EXPECT_LT(ratio_after, ratio_before - 0.05) << before.out << after.out;

  // Every stream finished and is embedded mode's: token ids, logprobs and the text. Not line for line:
  // through the router a line's text is its message's, and how many tokens a message carries
  // depends on timing (generate_json.h).
  std::vector<GenerateJson> embedded;
  for (const std::string& prompt : prompts) {
    const Result r = RunMoectl("generate --model " + model + " --prompt '" + prompt + "'" + sampling);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    absl::StatusOr<GenerateJson> parsed = ParseGenerateJson(r.out);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    ASSERT_EQ(parsed->tokens.size(), 600u);
    embedded.push_back(*std::move(parsed));
  }
  for (int i = 0; i < kStreams; ++i) {
    const Result& r = streams[static_cast<size_t>(i)];
    EXPECT_EQ(r.exit_code, 0) << "stream " << i << ": " << r.err;
    const absl::StatusOr<GenerateJson> got = ParseGenerateJson(r.out);
    ASSERT_TRUE(got.ok()) << "stream " << i << ": " << got.status();
    const GenerateJson& want = embedded[static_cast<size_t>(i) % prompts.size()];
    EXPECT_EQ(got->tokens.size(), 600u) << "stream " << i;
    EXPECT_EQ(FirstTokenDifference(*got, want), -1)
        << "stream " << i << " differs from embedded mode at this token";
    EXPECT_EQ(got->text, want.text) << "stream " << i;
  }
}

TEST(MoectlRebalanceTest, RefusesWithoutABudgetOrACluster) {
  const std::string& model = testing::TestModelDir("tiny+skewed", "bf16");
  // No cluster in the state dir.
  const Result none =
      RunMoectl("cluster rebalance --state-dir " + testing::MakeTempDir("moectl-rebalance-empty"));
  EXPECT_FALSE(none.crashed);
  EXPECT_NE(none.exit_code, 0);
  EXPECT_THAT(none.err, HasSubstr("no cluster is running"));
  // A bad budget is refused by `up` naming the flag.
  const Result bad =
      RunMoectl("cluster up --detach --model " + model + " --extra-expert-budget lots --state-dir " +
                testing::MakeTempDir("moectl-rebalance-bad"));
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_THAT(bad.err, HasSubstr("--extra-expert-budget: \"lots\" is not a byte size"));
  // A cluster without an extra-expert budget.
  LocalCluster cluster;
  cluster.up =
      RunMoectl("cluster up --detach --model " + model + " --attention-workers 1 --expert-workers 2" +
                " --port " + std::to_string(cluster.port) + " --state-dir " + cluster.state);
  ASSERT_EQ(cluster.up.exit_code, 0) << cluster.up.err;
  const Result r = RunMoectl("cluster rebalance --window 0.5 --state-dir " + cluster.state);
  EXPECT_FALSE(r.crashed);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("--extra-expert-budget is 0"));
  EXPECT_EQ(r.out, "");
  // Explicit addresses: only one of the two lists.
  const Result half = RunMoectl(
      "cluster rebalance --attention-workers 127.0.0.1:" + std::to_string(cluster.port + 1) + " --insecure");
  EXPECT_NE(half.exit_code, 0);
  EXPECT_THAT(half.err, HasSubstr("give both --attention-workers and --expert-workers"));
  // Explicit addresses need the cluster's credentials.
  const Result no_tls =
      RunMoectl("cluster rebalance --attention-workers 127.0.0.1:" + std::to_string(cluster.port + 1) +
                " --expert-workers 127.0.0.1:" + std::to_string(cluster.port + 2));
  EXPECT_NE(no_tls.exit_code, 0);
  EXPECT_THAT(no_tls.err, HasSubstr("--tls-ca, --tls-cert and --tls-key"));
  // The local cluster's own certificate, given explicitly, reaches the same refusal as the state dir.
  const Result explicit_tls = RunMoectl(
      "cluster rebalance --window 0.5 --attention-workers 127.0.0.1:" + std::to_string(cluster.port + 1) +
      " --expert-workers 127.0.0.1:" + std::to_string(cluster.port + 2) +
      ",127.0.0.1:" + std::to_string(cluster.port + 3) + " --tls-ca " + cluster.state +
      "/tls/ca.crt --tls-cert " + cluster.state + "/tls/tls.crt --tls-key " + cluster.state + "/tls/tls.key");
  EXPECT_NE(explicit_tls.exit_code, 0);
  EXPECT_THAT(explicit_tls.err, HasSubstr("--extra-expert-budget is 0"));
  // Expert workers out of rank order are refused.
  const Result swapped = RunMoectl(
      "cluster rebalance --window 0.5 --attention-workers 127.0.0.1:" + std::to_string(cluster.port + 1) +
      " --expert-workers 127.0.0.1:" + std::to_string(cluster.port + 3) +
      ",127.0.0.1:" + std::to_string(cluster.port + 2) + " --tls-ca " + cluster.state +
      "/tls/ca.crt --tls-cert " + cluster.state + "/tls/tls.crt --tls-key " + cluster.state + "/tls/tls.key");
  EXPECT_NE(swapped.exit_code, 0);
  EXPECT_THAT(swapped.err, HasSubstr("in rank order"));
}

}  // namespace
}  // namespace moe
