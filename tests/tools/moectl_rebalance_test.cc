// `moectl cluster rebalance` against a real local cluster (`moectl cluster up`) on the skewed tiny
// model: applied while 16 greedy streams run, no request fails, every stream is embedded mode's token
// for token (ids, logprobs and text), and the measured load ratio falls; --dry-run changes nothing;
// a cluster without an extra-expert budget is refused with a message naming the flag; an expert
// worker that does not answer is left out of the plan (or, holding the only copy of a shard, is a
// clear error); `--watch` applies by itself, again when an expert worker joins or restarts, and
// stops on SIGTERM with exit status 0; an attention worker listed but not running is skipped
// with a note until it runs, then gets the placement; and a one-shot run whose window another
// writer's switch falls into stops (ABORTED) instead of applying a plan made from stale reads.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <mutex>
#include <random>
#include <regex>
#include <sstream>
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
  // The streams take a while to start on a loaded machine; a window before the first routed row is
  // refused ("no expert rows"), so look again until rows flow.
  Result before;
  const auto rows_by = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  do {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    before = RunMoectl(rebalance + " --dry-run");
  } while (before.err.find("no expert rows were routed") != std::string::npos &&
           std::chrono::steady_clock::now() < rows_by);
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

// Clients that each run greedy `moectl generate` requests through the router one after another until
// Stop(); a failed request is kept (a rebalance under load may fail none).
class StreamingClients {
 public:
  StreamingClients(const std::string& router, int count) {
    for (int c = 0; c < count; ++c) {
      threads_.emplace_back([this, router, c] {
        while (!done_) {
          const Result g = RunMoectl("generate --router " + router + " --prompt 'Hello " + std::to_string(c) +
                                     "' --max-tokens 64 --temperature 0 --ignore-eos");
          std::lock_guard<std::mutex> lock(mu_);
          if (g.exit_code != 0) {
            failures_.push_back(g.err);
          } else {
            ++answered_;
          }
        }
      });
    }
  }
  ~StreamingClients() { Stop(); }

  // Waits (up to 120 s) until `count` requests have been answered: a one-shot rebalance plans from the
  // rows routed in its window and refuses an empty one, and on a loaded machine the first streams take
  // seconds to start, longer than a window.
  bool WaitForAnswers(int count) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (std::chrono::steady_clock::now() < deadline) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (answered_ >= count) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  // Stops the clients after their current request; returns the failed requests' errors.
  std::vector<std::string> Stop() {
    done_ = true;
    for (std::thread& t : threads_) t.join();
    threads_.clear();
    std::lock_guard<std::mutex> lock(mu_);
    return failures_;
  }

 private:
  std::atomic<bool> done_{false};
  std::mutex mu_;
  int answered_ = 0;
  std::vector<std::string> failures_;
  std::vector<std::thread> threads_;
};

// `moectl cluster rebalance --watch` as a child process, stdout to a file; SIGTERM at the end.
struct Watcher {
  std::string out = testing::MakeTempDir("moectl-rebalance-watch") + "/out";
  pid_t pid = -1;
  int status = -1;
  // The local cluster of `state`.
  Watcher(const std::string& state, const std::string& min_ratio)
      : Watcher(std::vector<std::string>{"--state-dir", state}, min_ratio) {}
  // The cluster `target` names (--attention-workers ... --expert-workers ... and credentials).
  Watcher(const std::vector<std::string>& target, const std::string& min_ratio) {
    const std::string moectl = std::string(MOE_BINARY_DIR_DEFAULT) + "/bin/moectl";
    std::vector<std::string> args = {moectl, "cluster",  "rebalance", "--watch",     "--interval",
                                     "0.5",  "--window", "0.5",       "--min-ratio", min_ratio};
    args.insert(args.end(), target.begin(), target.end());
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid = fork();
    if (pid == 0) {
      const int fd = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      execv(moectl.c_str(), argv.data());
      _exit(127);
    }
  }
  // SIGTERM, then the exit status (-1 if it did not exit within 30 s).
  int Stop() {
    if (pid <= 0) return status;
    kill(pid, SIGTERM);
    for (int i = 0; i < 300; ++i) {
      if (waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        return status;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    pid = -1;
    return -1;
  }
  ~Watcher() { Stop(); }
  std::vector<std::string> Lines() const {
    std::ifstream in(out);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  }
  // Waits up to `seconds` for a line from index `from` on for which `match` holds; its index or -1.
  template <typename Match>
  int WaitFor(size_t from, Match match, int seconds = 60) const {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    while (std::chrono::steady_clock::now() < deadline) {
      const std::vector<std::string> lines = Lines();
      for (size_t i = from; i < lines.size(); ++i)
        if (match(lines[i])) return static_cast<int>(i);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return -1;
  }
  std::string Text() const {
    std::string text;
    for (const std::string& line : Lines()) text += line + "\n";
    return text;
  }
};

// The "measured ratio" of a --watch line (-1 if none).
double WatchRatio(const std::string& line) {
  std::smatch m;
  if (!std::regex_search(line, m, std::regex(R"(measured ratio ([0-9.]+))"))) return -1;
  return std::stod(m[1]);
}

TEST(MoectlRebalanceTest, WatchAppliesByItselfAndAgainWhenAnExpertWorkerJoinsOrRestarts) {
  const std::string& model = testing::TestModelDir("tiny+skewed", "bf16");
  LocalCluster cluster;
  cluster.port = FreePortBlock(6);
  cluster.up = RunMoectl("cluster up --detach --model " + model +
                         " --attention-workers 1 --expert-workers 2 --joinable-expert-workers 1" +
                         " --extra-expert-budget 1GiB --kv-cache-gib 0.25 --port " +
                         std::to_string(cluster.port) + " --state-dir " + cluster.state);
  ASSERT_EQ(cluster.up.exit_code, 0) << cluster.up.err;
  auto address = [&](int offset) { return "127.0.0.1:" + std::to_string(cluster.port + offset); };
  const std::string tls = " --tls-ca " + cluster.state + "/tls/ca.crt --tls-cert " + cluster.state +
                          "/tls/tls.crt --tls-key " + cluster.state + "/tls/tls.key";

  // Clients stream all along: none may fail.
  StreamingClients clients(cluster.router(), 8);
  ASSERT_TRUE(clients.WaitForAnswers(8)) << "the clients' streams did not start";
  // One-shot, explicit addresses: the reserved joinable port (nothing runs there yet) is left out with
  // a note; as home worker 1 it would leave shard 1 without a host, which is an error.
  const Result noted =
      RunMoectl("cluster rebalance --dry-run --window 2 --attention-workers " + address(1) +
                " --expert-workers " + address(2) + "," + address(3) + "," + address(4) + tls);
  EXPECT_EQ(noted.exit_code, 0) << noted.err;
  EXPECT_THAT(noted.out, HasSubstr("note: left out of the plan: expert-2 (" + address(4) + "): GetInfo: "));
  EXPECT_THAT(noted.out, HasSubstr("expert-2 (" + address(4) + "): left out"));
  EXPECT_THAT(noted.out, HasSubstr("dry run: nothing changed"));
  const Result lost = RunMoectl("cluster rebalance --dry-run --window 0.5 --attention-workers " + address(1) +
                                " --expert-workers " + address(2) + "," + address(4) + tls);
  EXPECT_FALSE(lost.crashed);
  EXPECT_EQ(lost.exit_code, 1);
  EXPECT_THAT(lost.err, HasSubstr("shard 1's home experts have no live host: expert-1 (" + address(4) +
                                  "): GetInfo: "));

  Watcher watcher(cluster.state, "1.05");
  auto applied = [](int workers) {
    return [workers](const std::string& line) {
      return line.find("applied placement version") != std::string::npos &&
             line.find(std::to_string(workers) + " expert workers") != std::string::npos;
    };
  };
  // It applies by itself (the skewed load is above --min-ratio), and the measured ratio falls.
  const int first = watcher.WaitFor(0, applied(2));
  ASSERT_GE(first, 0) << watcher.Text();
  const double before = WatchRatio(watcher.Lines()[static_cast<size_t>(first)]);
  const int calm = watcher.WaitFor(static_cast<size_t>(first) + 1, [&](const std::string& line) {
    return line.find("nothing to do") != std::string::npos && WatchRatio(line) > 0 &&
           WatchRatio(line) < before - 0.05;
  });
  ASSERT_GE(calm, 0) << watcher.Text();
  std::cout << "measured load ratio (max/mean rows per expert worker): " << before << " before, "
            << WatchRatio(watcher.Lines()[static_cast<size_t>(calm)]) << " after --watch applied"
            << std::endl;
  EXPECT_EQ(watcher.Stop(), 0) << watcher.Text();
  EXPECT_THAT(watcher.Text(), HasSubstr("moectl cluster rebalance --watch: stopped"));
  std::cout << "the first watcher's output:\n" << watcher.Text() << std::flush;

  // A watcher that never applies for the load alone (--min-ratio 1000) takes the cluster as it finds
  // it, then applies when it changes.
  Watcher keeper(cluster.state, "1000");
  ASSERT_GE(keeper.WaitFor(
                0, [](const std::string& line) { return line.find("nothing to do") != std::string::npos; }),
            0)
      << keeper.Text();
  // An expert worker joins (`cluster scale`): the next look includes it. The count is taken before the
  // scale: a look may see the new worker, and apply, before `cluster scale` returns.
  const size_t before_grow = keeper.Lines().size();
  const Result grow = RunMoectl("cluster scale --expert-workers 3 --state-dir " + cluster.state);
  ASSERT_EQ(grow.exit_code, 0) << grow.err;
  const int joined = keeper.WaitFor(before_grow, applied(3));
  ASSERT_GE(joined, 0) << keeper.Text();

  // It dies (kill -9) and `cluster up` restarts it without its copies: the watcher applies again.
  pid_t pid = 0;
  std::ifstream(cluster.state + "/expert-2.pid") >> pid;
  ASSERT_GT(pid, 0);
  const size_t at_kill = keeper.Lines().size();
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  const int noticed = keeper.WaitFor(at_kill, [](const std::string& line) {
    return line.find("expert-2 (") != std::string::npos || line.find("expert-2 holds") != std::string::npos;
  });
  ASSERT_GE(noticed, 0) << keeper.Text();
  const int rejoined = keeper.WaitFor(static_cast<size_t>(noticed) + 1, applied(3), 90);
  ASSERT_GE(rejoined, 0) << keeper.Text();

  EXPECT_EQ(keeper.Stop(), 0) << keeper.Text();
  std::cout << "the second watcher's output:\n" << keeper.Text() << std::flush;
  EXPECT_THAT(keeper.Text(), HasSubstr("moectl cluster rebalance --watch: stopped"));
  const std::vector<std::string> failures = clients.Stop();
  EXPECT_TRUE(failures.empty()) << failures.size() << " failed, the first: " << failures.front();
}

// The balancer of a cluster whose attention workers autoscale lists every attention worker there may
// be (the chart: maxReplicas of them). One listed but not running is left out of each look with a
// note; once it runs (`cluster scale` starts it, on the home shards) the next look sees it on another
// placement version and gives it the placement; no request fails meanwhile.
TEST(MoectlRebalanceTest, WatchSkipsAnAbsentAttentionWorkerAndGivesItThePlacementOnceItRuns) {
  const std::string& model = testing::TestModelDir("tiny+skewed", "bf16");
  LocalCluster cluster;
  cluster.up = RunMoectl("cluster up --detach --model " + model +
                         " --attention-workers 1 --expert-workers 2 --extra-expert-budget 1GiB" +
                         " --kv-cache-gib 0.25 --port " + std::to_string(cluster.port) + " --state-dir " +
                         cluster.state);
  ASSERT_EQ(cluster.up.exit_code, 0) << cluster.up.err;
  auto address = [&](int offset) { return "127.0.0.1:" + std::to_string(cluster.port + offset); };
  // Router, attention-0, expert-0 and expert-1 hold port .. port + 3: `cluster scale` starts the
  // next attention worker on port + 4 (FreePortBlock found it free).
  const std::string absent = address(4);
  const std::vector<std::string> target = {"--attention-workers",
                                           address(1) + "," + absent,
                                           "--expert-workers",
                                           address(2) + "," + address(3),
                                           "--tls-ca",
                                           cluster.state + "/tls/ca.crt",
                                           "--tls-cert",
                                           cluster.state + "/tls/tls.crt",
                                           "--tls-key",
                                           cluster.state + "/tls/tls.key"};

  StreamingClients clients(cluster.router(), 4);
  ASSERT_TRUE(clients.WaitForAnswers(4)) << "the clients' streams did not start";

  // A one-shot dry run notes the absent worker and plans for the one that runs.
  std::string one_shot_args = "cluster rebalance --dry-run --window 2";
  for (const std::string& a : target) one_shot_args += " " + a;
  const Result noted = RunMoectl(one_shot_args);
  EXPECT_EQ(noted.exit_code, 0) << noted.err;
  EXPECT_THAT(noted.out, HasSubstr("note: left out (no placement until it answers): attention worker " +
                                   absent + ": GetLoad: UNAVAILABLE"));
  EXPECT_THAT(noted.out, HasSubstr("expert rows from 1 attention workers"));
  EXPECT_THAT(noted.out, HasSubstr("dry run: nothing changed"));

  // The watcher applies on the one attention worker that answers, noting the other.
  Watcher watcher(target, "1.05");
  auto applied = [](int attention) {
    return [attention](const std::string& line) {
      return line.find("applied placement version") != std::string::npos &&
             line.find(" on " + std::to_string(attention) + " attention and ") != std::string::npos;
    };
  };
  const int first = watcher.WaitFor(0, applied(1));
  ASSERT_GE(first, 0) << watcher.Text();
  EXPECT_THAT(watcher.Lines()[static_cast<size_t>(first)],
              HasSubstr("left out: attention worker " + absent + ": GetLoad: UNAVAILABLE"));

  // The second attention worker starts where the watcher expects it. The count is taken before the
  // scale: a look may see the new worker, and apply, before `cluster scale` returns (it waits for the
  // router to take the worker up).
  const size_t before_grow = watcher.Lines().size();
  const Result grow = RunMoectl("cluster scale --attention-workers 2 --state-dir " + cluster.state);
  ASSERT_EQ(grow.exit_code, 0) << grow.err;
  ASSERT_THAT(grow.err, HasSubstr(absent)) << "`cluster scale` started the attention worker elsewhere";
  // A look sees it on the home shards (another placement version) and applies on both.
  const int joined = watcher.WaitFor(before_grow, [&](const std::string& line) {
    return applied(2)(line) &&
           line.find("attention worker " + absent + " uses placement version") != std::string::npos;
  });
  ASSERT_GE(joined, 0) << watcher.Text();
  // Then both use it: a later look finds nothing changed and leaves nobody out.
  const int settled = watcher.WaitFor(static_cast<size_t>(joined) + 1, [](const std::string& line) {
    return line.find("nothing to do") != std::string::npos;
  });
  ASSERT_GE(settled, 0) << watcher.Text();
  EXPECT_THAT(watcher.Lines()[static_cast<size_t>(settled)], ::testing::Not(HasSubstr("left out")));
  EXPECT_EQ(watcher.Stop(), 0) << watcher.Text();
  std::cout << "the watcher's output:\n" << watcher.Text() << std::flush;

  // Two writers at once (docs/operations.md#two-writers-scale-and-rebalance): another rebalance
  // switches both attention workers during a one-shot's window. The one-shot would have planned from
  // what it read before (and replaced the expert workers' extra sets the other placement routes to);
  // it stops with ABORTED instead and applies nothing. The margins are wide for a loaded (sanitized)
  // machine: 4 s for the slow run to make its first read, 16 s for the quick one to switch. The quick
  // one's window is 2 s, not 0.5: each client starts a `moectl generate` process per request, and under
  // a sanitizer all four were once between requests for a whole 0.5 s window (no rows: refused).
  Result slow;
  std::thread slow_thread(
      [&] { slow = RunMoectl("cluster rebalance --window 20 --state-dir " + cluster.state); });
  std::this_thread::sleep_for(std::chrono::seconds(4));
  const Result quick = RunMoectl("cluster rebalance --window 2 --state-dir " + cluster.state);
  slow_thread.join();
  ASSERT_EQ(quick.exit_code, 0) << quick.err;
  EXPECT_THAT(quick.out, HasSubstr("applied: placement version"));
  EXPECT_FALSE(slow.crashed);
  EXPECT_EQ(slow.exit_code, 1) << slow.out << slow.err;
  EXPECT_THAT(slow.err, HasSubstr("during the window (another writer): look again"));
  EXPECT_THAT(slow.out, ::testing::Not(HasSubstr("applied:")));

  const std::vector<std::string> failures = clients.Stop();
  EXPECT_TRUE(failures.empty()) << failures.size() << " failed, the first: " << failures.front();
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
