// Worker failure at the router level (issue 3, "Worker failure"): a router, attention workers and
// three expert workers run as separate processes on 127.0.0.1 (started with the process helper, not
// `moectl cluster up`, whose supervisor tears the whole cluster down when one child dies).
// - An expert worker is killed with SIGKILL while streams are in flight: every stream ends
//   UNAVAILABLE within 10 s, the router's readiness turns NOT_SERVING and new requests fail fast,
//   and restarting the worker (same rank, same port) brings the cluster back to serving the
//   embedded engine's exact greedy tokens without restarting anything else.
// - An expert worker hangs (SIGSTOP): the streams fail UNAVAILABLE within the attention worker's
//   MoE timeout; after SIGCONT the cluster serves embedded mode's tokens again.
// - One of two attention workers is killed: its streams migrate to the survivor and every stream
//   finishes with exactly the uninterrupted output (request migration).
// - Elastic attention workers: under 32 streams one is added to a running cluster (the router's
//   --attention_workers_file) and takes new requests, and the first is removed and stopped: no
//   request fails and every output is embedded mode's.
//
// Synchronisation is by polling with deadlines (health checks, GetLoad, stream reads), never sleeps.
#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/engine/testing/requests.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "moe/v1/attention.grpc.pb.h"
#include "moe/v1/expert_control.grpc.pb.h"
#include "moe/v1/generate.grpc.pb.h"
#include "tests/integration/client/cluster_client.h"
#include "tests/services/process_helper.h"
#include "tests/util/test_models.h"

namespace moe {
namespace {

using moe::engine_testing::PseudoRandomPrompt;
using moe::testing::ChildProcess;
using moe::testing::Generate;
using moe::testing::GenerateResult;
using moe::testing::GreedyRequest;

constexpr int kNumExpertWorkers = 3;
constexpr int kVictimRank = 1;  // the middle shard: experts [42, 85) of every layer
// Long enough that no stream can finish before the kill (tiny's context is 4096 tokens).
constexpr int kLongMaxNewTokens = 4000;
const absl::Duration kStartupTimeout = absl::Seconds(120);

// What a fixture starts: attention workers and the extra flags they get, expert workers and the
// copies of each expert shard among them (--expert_replicas).
struct ClusterShape {
  int attention_workers = 1;
  std::vector<std::string> attention_flags;
  int expert_workers = kNumExpertWorkers;
  int expert_replicas = 1;
  // The router reads its attention workers from a file it re-reads (--attention_workers_file),
  // which WriteAttentionWorkersFile rewrites; otherwise a fixed --attention_workers.
  bool attention_workers_file = false;
  // Expert workers that may join later (ranks expert_workers..; StartExpert starts one with
  // --joinable): ports reserved, named to the attention workers, not started.
  int joinable_expert_workers = 0;
};

// Router + attention workers + kNumExpertWorkers expert workers on reserved ports, with the same
// flags `moectl cluster up` gives them (so the timeouts under test are the product's defaults unless
// the shape says otherwise).
class FailoverTest : public ::testing::Test {
 protected:
  virtual ClusterShape Shape() const { return {}; }

  void SetUp() override {
    shape_ = Shape();
    const ClusterShape& shape = shape_;
    model_ = moe::testing::TestModelDir("tiny", "bf16");
    log_dir_ = moe::testing::MakeTempDir("failover-logs");
    for (int r = 0; r < shape.expert_workers + shape.joinable_expert_workers; ++r)
      expert_ports_.push_back(moe::testing::FreePort());
    experts_.resize(static_cast<size_t>(shape.expert_workers + shape.joinable_expert_workers));
    for (int r = 0; r < shape.expert_workers; ++r) ASSERT_NO_FATAL_FAILURE(StartExpert(r));
    std::vector<std::string> expert_addresses;
    for (int r = 0; r < shape.expert_workers; ++r) expert_addresses.push_back(ExpertAddress(r));
    for (int a = 0; a < shape.attention_workers; ++a) ASSERT_NO_FATAL_FAILURE(StartAttention(a));
    attention_address_ = attention_addresses_[0];
    router_address_ = moe::testing::LocalAddress(moe::testing::FreePort());
    std::string attention_flag = "--attention_workers=" + absl::StrJoin(attention_addresses_, ",");
    if (shape.attention_workers_file) {
      WriteAttentionWorkersFile(attention_addresses_);
      attention_flag = "--attention_workers_file=" + AttentionWorkersFile();
    }
    auto router = ChildProcess::Start(moe::testing::BinaryPath("moe-router"),
                                      {"--model=" + model_, attention_flag, "--discovery_interval_ms=100",
                                       "--expert_workers=" + absl::StrJoin(expert_addresses, ","),
                                       "--listen=" + router_address_, "--metrics_port=0", "--insecure"},
                                      log_dir_ + "/router.log");
    ASSERT_TRUE(router.ok()) << router.status();
    router_ = *std::move(router);
    const absl::Status ready =
        moe::testing::WaitForHealth(router_address_, "readiness", true, absl::Now() + kStartupTimeout);
    ASSERT_TRUE(ready.ok()) << ready << "\n" << Logs();
  }

  void TearDown() override {
    if (HasFailure()) std::cerr << Logs();
    // Reverse order of start: the router first, the expert workers last.
    router_.reset();
    attention_.clear();
    experts_.clear();
  }

  // Starts attention worker `rank` on a new port (appended to attention_addresses_ / attention_), with
  // the flags `moectl cluster up` gives it; a rank past the shape's workers is one added later.
  void StartAttention(int rank) {
    const std::string address = moe::testing::LocalAddress(moe::testing::FreePort());
    std::vector<std::string> expert_addresses;
    for (int r = 0; r < shape_.expert_workers; ++r) expert_addresses.push_back(ExpertAddress(r));
    std::vector<std::string> flags = {
        "--model=" + model_,
        absl::StrCat("--rank=", rank),
        absl::StrCat("--num_attention_workers=", std::max(rank + 1, shape_.attention_workers)),
        "--expert_workers=" + absl::StrJoin(expert_addresses, ","),
        absl::StrCat("--expert_replicas=", shape_.expert_replicas),
        "--listen=" + address,
        "--metrics_port=0",
        "--transport=ucx",
        "--insecure"};
    std::vector<std::string> joinable;
    for (int r = shape_.expert_workers; r < shape_.expert_workers + shape_.joinable_expert_workers; ++r)
      joinable.push_back(ExpertAddress(r));
    if (!joinable.empty()) flags.push_back("--joinable_expert_workers=" + absl::StrJoin(joinable, ","));
    flags.insert(flags.end(), shape_.attention_flags.begin(), shape_.attention_flags.end());
    auto attention = ChildProcess::Start(moe::testing::BinaryPath("moe-attention-worker"), flags,
                                         absl::StrCat(log_dir_, "/attention-", rank, ".log"));
    ASSERT_TRUE(attention.ok()) << attention.status();
    attention_addresses_.push_back(address);
    attention_.push_back(*std::move(attention));
  }

  std::string AttentionWorkersFile() const { return log_dir_ + "/attention_workers"; }
  // Rewrites the router's --attention_workers_file through a rename (it never reads half a file).
  void WriteAttentionWorkersFile(const std::vector<std::string>& addresses) const {
    const std::string tmp = AttentionWorkersFile() + ".tmp";
    { std::ofstream(tmp, std::ios::trunc) << absl::StrJoin(addresses, "\n") << "\n"; }
    ASSERT_EQ(std::rename(tmp.c_str(), AttentionWorkersFile().c_str()), 0);
  }
  // The router's count of attention workers it places on (GetModelInfo), or -1.
  // The router's attention workers: how many are in its set, and how many of those it polled ready
  // (only those get requests); nullopt when GetModelInfo fails.
  std::optional<std::pair<int, int>> RouterAttentionWorkers() const {
    auto stub =
        v1::Generation::NewStub(grpc::CreateChannel(router_address_, grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::ModelInfo info;
    if (!stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok()) return std::nullopt;
    return std::pair(info.num_attention_workers(), info.num_ready_attention_workers());
  }
  // Until the router has `n` attention workers, all of them ready.
  bool WaitForRouterAttentionWorkers(int n) const {
    for (const absl::Time deadline = absl::Now() + absl::Seconds(30); absl::Now() < deadline;) {
      if (RouterAttentionWorkers() == std::pair(n, n)) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

  // A rank past the shape's home workers starts a joinable worker.
  void StartExpert(int rank) {
    std::vector<std::string> flags = {"--model=" + model_,
                                      absl::StrCat("--rank=", rank),
                                      absl::StrCat("--num_expert_workers=", shape_.expert_workers),
                                      absl::StrCat("--expert_replicas=", shape_.expert_replicas),
                                      "--listen=" + ExpertAddress(rank),
                                      "--metrics_port=0",
                                      "--transport=ucx",
                                      "--insecure"};
    if (rank >= shape_.expert_workers) flags.push_back("--joinable");
    auto child = ChildProcess::Start(moe::testing::BinaryPath("moe-expert-worker"), flags,
                                     absl::StrCat(log_dir_, "/expert-", rank, ".log"));
    ASSERT_TRUE(child.ok()) << child.status();
    experts_[static_cast<size_t>(rank)] = *std::move(child);
  }

  // SIGKILL, then reap (so the port is released before a restart).
  static void Kill(ChildProcess& victim, const std::string& name) {
    victim.Signal(SIGKILL);
    ASSERT_TRUE(victim.Wait(absl::Seconds(10)).has_value()) << name << " survived SIGKILL";
  }
  void KillExpert(int rank) { Kill(*experts_[static_cast<size_t>(rank)], absl::StrCat("expert-", rank)); }

  std::string ExpertAddress(int rank) const {
    return moe::testing::LocalAddress(expert_ports_[static_cast<size_t>(rank)]);
  }

  // SetExpertPlacement(version, extras) on attention worker `rank`, retried while it has not
  // connected a joinable worker named yet (FAILED_PRECONDITION), up to 30 s.
  grpc::Status SetPlacement(int rank, uint64_t version, const std::vector<std::pair<int, int>>& extras) {
    auto stub = v1::AttentionWorker::NewStub(grpc::CreateChannel(
        attention_addresses_[static_cast<size_t>(rank)], grpc::InsecureChannelCredentials()));
    grpc::Status status;
    for (const absl::Time deadline = absl::Now() + absl::Seconds(30); absl::Now() < deadline;) {
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
      v1::SetExpertPlacementRequest request;
      request.set_placement_version(version);
      for (const auto& [expert, worker] : extras) {
        v1::ExtraExpertCopy* copy = request.add_extras();
        copy->set_expert(expert);
        copy->set_worker(worker);
      }
      v1::SetExpertPlacementResponse response;
      status = stub->SetExpertPlacement(&context, request, &response);
      if (status.error_code() != grpc::StatusCode::FAILED_PRECONDITION) break;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return status;
  }
  // The copies that make joinable expert worker `rank` a host of its whole shard.
  std::vector<std::pair<int, int>> ShardCopiesOn(int rank) {
    auto stub = v1::ExpertControl::NewStub(
        grpc::CreateChannel(ExpertAddress(rank), grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::ExpertWorkerInfo info;
    const grpc::Status status = stub->GetInfo(&context, v1::GetInfoRequest(), &info);
    EXPECT_TRUE(status.ok()) << status.error_message();
    std::vector<std::pair<int, int>> copies;
    for (int e = info.first_expert(); e < info.first_expert() + info.num_experts(); ++e)
      copies.emplace_back(e, rank);
    return copies;
  }

  v1::WorkerLoad AttentionLoad(int rank = 0) {
    auto stub = v1::AttentionWorker::NewStub(grpc::CreateChannel(
        attention_addresses_[static_cast<size_t>(rank)], grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::WorkerLoad load;
    const grpc::Status status = stub->GetLoad(&context, v1::GetLoadRequest(), &load);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return load;
  }

  // Polls attention worker `rank` until every KV block is free and nothing runs (freeing happens
  // on the worker's step), up to 10 s; returns the last load seen.
  v1::WorkerLoad AttentionLoadWhenIdle(int rank = 0) {
    v1::WorkerLoad load = AttentionLoad(rank);
    for (const absl::Time deadline = absl::Now() + absl::Seconds(10);
         (load.num_free_kv_blocks() != load.num_kv_blocks() || load.num_running() != 0) &&
         absl::Now() < deadline;) {
      load = AttentionLoad(rank);
    }
    return load;
  }

  // The embedded engine's answers to `requests` and the cluster's, all sent at once; expects the
  // same tokens and bit-identical logprobs, finishing by length.
  void ExpectClusterMatchesEmbedded(const std::vector<v1::GenerateRequest>& requests) {
    const absl::StatusOr<std::vector<GenerateResult>> expected =
        moe::testing::GenerateEmbedded(model_, requests);
    ASSERT_TRUE(expected.ok()) << expected.status();
    std::vector<GenerateResult> actual(requests.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < requests.size(); ++i) {
      threads.emplace_back([&, i] { actual[i] = Generate(router_address_, requests[i], absl::Seconds(60)); });
    }
    for (std::thread& t : threads) t.join();
    ExpectExactly(actual, *expected);
  }

  // Every stream succeeded, finished by length, with exactly the expected tokens and logprobs.
  void ExpectExactly(const std::vector<GenerateResult>& actual, const std::vector<GenerateResult>& expected) {
    ASSERT_EQ(actual.size(), expected.size());
    for (size_t i = 0; i < actual.size(); ++i) {
      ASSERT_TRUE(actual[i].status.ok()) << i << ": " << actual[i].status.error_message() << "\n" << Logs();
      EXPECT_EQ(actual[i].finish, v1::FINISH_REASON_LENGTH);
      EXPECT_EQ(actual[i].tokens, expected[i].tokens) << "stream " << i;
      EXPECT_EQ(actual[i].logprobs, expected[i].logprobs) << "stream " << i;
    }
  }

  std::string Logs() const {
    std::string out;
    auto add = [&out](const std::string& name, const std::unique_ptr<ChildProcess>& child) {
      if (child) absl::StrAppend(&out, "==== ", name, " ====\n", child->Log(), "\n");
    };
    add("router", router_);
    for (size_t a = 0; a < attention_.size(); ++a) add(absl::StrCat("attention-", a), attention_[a]);
    for (size_t r = 0; r < experts_.size(); ++r) add(absl::StrCat("expert-", r), experts_[r]);
    return out;
  }

  ClusterShape shape_;
  std::string model_;
  std::string log_dir_;
  std::vector<int> expert_ports_;
  std::vector<std::string> attention_addresses_;
  std::string attention_address_;  // attention worker 0
  std::string router_address_;
  std::vector<std::unique_ptr<ChildProcess>> experts_;
  std::vector<std::unique_ptr<ChildProcess>> attention_;
  std::unique_ptr<ChildProcess> router_;
};

// The requests InFlightStreams sends: stream i's greedy prompt and length.
v1::GenerateRequest StreamRequest(int i, int max_new_tokens) {
  return GreedyRequest(PseudoRandomPrompt(4 + 3 * i, 500u + static_cast<uint32_t>(i)), max_new_tokens);
}

// Streams started in background threads; Wait() blocks until each has received its first token.
class InFlightStreams {
 public:
  InFlightStreams(const std::string& router, int count, int max_new_tokens = kLongMaxNewTokens)
      : InFlightStreams(router, StreamRequests(count, max_new_tokens)) {}
  InFlightStreams(const std::string& router, std::vector<v1::GenerateRequest> requests)
      : outcomes_(requests.size()) {
    for (size_t i = 0; i < requests.size(); ++i) {
      threads_.emplace_back([this, router, i, request = requests[i]] { Run(router, i, request); });
    }
  }
  static std::vector<v1::GenerateRequest> StreamRequests(int count, int max_new_tokens) {
    std::vector<v1::GenerateRequest> requests;
    for (int i = 0; i < count; ++i) requests.push_back(StreamRequest(i, max_new_tokens));
    return requests;
  }
  ~InFlightStreams() { Join(); }

  bool WaitAllStarted(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto all = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return started_ + ended_early_ == static_cast<int>(outcomes_.size());
    };
    return mu_.AwaitWithTimeout(absl::Condition(&all), timeout) && ended_early_ == 0;
  }

  const std::vector<GenerateResult>& Join() {
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
    return outcomes_;
  }

 private:
  void Run(const std::string& router, size_t i, const v1::GenerateRequest& request) {
    bool counted = false;
    auto count_first_token = [&](const v1::GenerateResponse& response) {
      if (counted || response.tokens_size() == 0) return;
      counted = true;
      absl::MutexLock lock(&mu_);
      ++started_;
    };
    // A bound so that a hang fails the test instead of blocking it; far above the 10 s asserted, and
    // above the 2-3 minutes that 400 tokens take under ASan on 2 cores.
    outcomes_[i] = Generate(router, request, absl::Minutes(8), count_first_token);
    if (!counted) {
      absl::MutexLock lock(&mu_);
      ++ended_early_;
    }
  }

  std::vector<GenerateResult> outcomes_;
  std::vector<std::thread> threads_;
  absl::Mutex mu_;
  int started_ ABSL_GUARDED_BY(mu_) = 0;
  int ended_early_ ABSL_GUARDED_BY(mu_) = 0;
};

constexpr int kNumStreams = 4;

TEST_F(FailoverTest, KilledExpertWorkerEndsEveryInFlightStreamUnavailableWithinTenSeconds) {
  InFlightStreams streams(router_address_, kNumStreams);
  ASSERT_TRUE(streams.WaitAllStarted(absl::Seconds(60))) << "streams did not start";
  ASSERT_NO_FATAL_FAILURE(KillExpert(kVictimRank));
  const absl::Time killed = absl::Now();
  const std::vector<GenerateResult>& outcomes = streams.Join();
  for (int i = 0; i < kNumStreams; ++i) {
    const GenerateResult& o = outcomes[static_cast<size_t>(i)];
    EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << "stream " << i << ": " << o.status.error_message();
    EXPECT_NE(o.finish, v1::FINISH_REASON_LENGTH) << "stream " << i << " finished before the kill";
    EXPECT_LT(static_cast<int>(o.tokens.size()), kLongMaxNewTokens) << "stream " << i;
    const absl::Duration took = o.ended - killed;
    EXPECT_LT(took, absl::Seconds(10)) << "stream " << i;
    std::cerr << "stream " << i << ": " << o.tokens.size() << " tokens, ended " << absl::FormatDuration(took)
              << " after the kill: " << o.status.error_message() << "\n";
  }
}

TEST_F(FailoverTest, RouterTurnsNotServingAndRefusesNewRequestsFastDuringTheOutage) {
  ASSERT_NO_FATAL_FAILURE(KillExpert(kVictimRank));
  const absl::Time killed = absl::Now();
  const absl::Status not_serving =
      moe::testing::WaitForHealth(router_address_, "readiness", false, killed + absl::Seconds(10));
  ASSERT_TRUE(not_serving.ok()) << not_serving;
  std::cerr << "router NOT_SERVING " << absl::FormatDuration(absl::Now() - killed) << " after the kill\n";
  EXPECT_FALSE(AttentionLoad().ready());

  // The router refuses at admission (no ready attention worker) rather than queueing the request
  // until its deadline: UNAVAILABLE well before the 30 s deadline given.
  for (int i = 0; i < 3; ++i) {
    const absl::Time sent = absl::Now();
    const GenerateResult o =
        Generate(router_address_, GreedyRequest(PseudoRandomPrompt(5, 900u + i), 8), absl::Seconds(30));
    EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE) << o.status.error_message();
    EXPECT_TRUE(o.tokens.empty());
    EXPECT_LT(o.ended - sent, absl::Seconds(2)) << "request " << i << " was not refused fast";
  }
  // Still refusing: the outage lasts until the worker is back, with nothing restarted.
  EXPECT_FALSE(moe::testing::IsServing(router_address_, "readiness"));
  EXPECT_TRUE(router_->Running());
  EXPECT_TRUE(attention_[0]->Running());
}

// Greedy requests for the recovered cluster to answer as embedded mode does.
std::vector<v1::GenerateRequest> CheckRequests() {
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < 3; ++i) {
    requests.push_back(
        GreedyRequest(PseudoRandomPrompt(3 + 9 * i, 700u + static_cast<uint32_t>(i)), /*max_new_tokens=*/12));
  }
  return requests;
}

TEST_F(FailoverTest, RestartedExpertWorkerRestoresServingWithEmbeddedGreedyTokens) {
  {
    InFlightStreams streams(router_address_, 2);
    ASSERT_TRUE(streams.WaitAllStarted(absl::Seconds(60)));
    ASSERT_NO_FATAL_FAILURE(KillExpert(kVictimRank));
    for (const GenerateResult& o : streams.Join()) {
      EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE) << o.status.error_message();
    }
  }
  ASSERT_TRUE(
      moe::testing::WaitForHealth(router_address_, "readiness", false, absl::Now() + absl::Seconds(10)).ok());

  const pid_t router_pid = router_->pid();
  const pid_t attention_pid = attention_[0]->pid();
  const absl::Time restarted = absl::Now();
  ASSERT_NO_FATAL_FAILURE(StartExpert(kVictimRank));
  const absl::Status serving =
      moe::testing::WaitForHealth(router_address_, "readiness", true, absl::Now() + kStartupTimeout);
  ASSERT_TRUE(serving.ok()) << serving;
  std::cerr << "router SERVING " << absl::FormatDuration(absl::Now() - restarted) << " after the restart\n";
  // Nothing else was restarted.
  EXPECT_EQ(router_->pid(), router_pid);
  EXPECT_TRUE(router_->Running());
  EXPECT_EQ(attention_[0]->pid(), attention_pid);
  EXPECT_TRUE(attention_[0]->Running());
  // The failed sequences gave back their KV blocks.
  const v1::WorkerLoad load = AttentionLoadWhenIdle();
  EXPECT_EQ(load.num_free_kv_blocks(), load.num_kv_blocks());
  EXPECT_EQ(load.num_running(), 0);

  ExpectClusterMatchesEmbedded(CheckRequests());
}

// A hung expert worker (SIGSTOP: its sockets stay open, nothing answers) is caught by the attention
// worker's MoE round deadline, set short here, not by a broken connection.
constexpr int kMoeTimeoutSeconds = 3;

class HungExpertWorkerTest : public FailoverTest {
 protected:
  ClusterShape Shape() const override {
    return {.attention_workers = 1,
            .attention_flags = {absl::StrCat("--moe_timeout_seconds=", kMoeTimeoutSeconds)}};
  }
};

TEST_F(HungExpertWorkerTest, StreamsFailUnavailableWithinTheMoeTimeoutAndTheClusterRecoversAfterSigcont) {
  ChildProcess& victim = *experts_[kVictimRank];
  {
    InFlightStreams streams(router_address_, kNumStreams);
    ASSERT_TRUE(streams.WaitAllStarted(absl::Seconds(60))) << "streams did not start";
    victim.Signal(SIGSTOP);
    const absl::Time stopped = absl::Now();
    const std::vector<GenerateResult>& outcomes = streams.Join();
    for (int i = 0; i < kNumStreams; ++i) {
      const GenerateResult& o = outcomes[static_cast<size_t>(i)];
      EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE)
          << "stream " << i << ": " << o.status.error_message();
      EXPECT_LT(static_cast<int>(o.tokens.size()), kLongMaxNewTokens) << "stream " << i;
      // The round that hangs may have started up to one step before the stop; the stream ends when
      // its deadline passes, plus the time for the error to reach the client.
      const absl::Duration took = o.ended - stopped;
      EXPECT_LT(took, absl::Seconds(kMoeTimeoutSeconds + 3)) << "stream " << i;
      std::cerr << "stream " << i << ": ended " << absl::FormatDuration(took)
                << " after SIGSTOP: " << o.status.error_message() << "\n";
    }
  }
  EXPECT_TRUE(victim.Running());  // hung, not dead: nothing restarted it

  victim.Signal(SIGCONT);
  const absl::Time resumed = absl::Now();
  const absl::Status serving =
      moe::testing::WaitForHealth(router_address_, "readiness", true, absl::Now() + absl::Seconds(60));
  ASSERT_TRUE(serving.ok()) << serving;
  std::cerr << "router SERVING " << absl::FormatDuration(absl::Now() - resumed) << " after SIGCONT\n";
  const v1::WorkerLoad load = AttentionLoadWhenIdle();
  EXPECT_EQ(load.num_free_kv_blocks(), load.num_kv_blocks());
  EXPECT_EQ(load.num_running(), 0);
  // The rounds the worker answers late, after SIGCONT, must not be mistaken for new ones.
  ExpectClusterMatchesEmbedded(CheckRequests());
}

// Request migration: the streams of an attention worker that is killed (SIGKILL) or stopped
// (SIGTERM: it turns NOT_SERVING and hands its open streams back) move to the other one as prompt +
// tokens already streamed, and every client's stream simply goes on: no failed request, and every
// output (tokens and logprobs) is the one an uninterrupted embedded run gives, for greedy and for
// seeded sampling (the sampler's draws are keyed by seed and generated-token index).
class AttentionWorkerFailoverTest : public FailoverTest, public ::testing::WithParamInterface<int> {
 protected:
  ClusterShape Shape() const override { return {.attention_workers = 2}; }
};

TEST_P(AttentionWorkerFailoverTest, StreamsOfAStoppedAttentionWorkerMigrateAndFinishExactly) {
  constexpr int kStreams = 32;
  constexpr int kMaxNewTokens = 48;
  int survivor = 0;
  std::vector<v1::GenerateRequest> requests = InFlightStreams::StreamRequests(kStreams, kMaxNewTokens);
  for (int i = 1; i < kStreams; i += 2) {  // every other stream sampled, seeded
    requests[static_cast<size_t>(i)].mutable_sampling()->set_temperature(0.8f);
    requests[static_cast<size_t>(i)].mutable_sampling()->set_seed(static_cast<uint64_t>(1000 + i));
  }
  const absl::StatusOr<std::vector<GenerateResult>> expected =
      moe::testing::GenerateEmbedded(model_, requests);
  ASSERT_TRUE(expected.ok()) << expected.status();
  {
    InFlightStreams streams(router_address_, requests);
    ASSERT_TRUE(streams.WaitAllStarted(absl::Seconds(120))) << "streams did not start";
    // How the router spreads the streams depends on when its load polls land, so the victim is the
    // worker holding the most streams: the signal always hits some.
    const int running_on_0 = AttentionLoad(0).num_running();
    const int running_on_1 = AttentionLoad(1).num_running();
    const int victim = running_on_1 >= running_on_0 ? 1 : 0;
    survivor = 1 - victim;
    ASSERT_GT(std::max(running_on_0, running_on_1), 0);
    ChildProcess& stopped = *attention_[static_cast<size_t>(victim)];
    stopped.Signal(GetParam());
    ASSERT_TRUE(stopped.Wait(absl::Seconds(30)).has_value()) << "attention-" << victim << " did not exit";
    ASSERT_NO_FATAL_FAILURE(ExpectExactly(streams.Join(), *expected));
  }
  EXPECT_THAT(router_->Log(), ::testing::HasSubstr("migrating it with"));
  EXPECT_TRUE(moe::testing::IsServing(router_address_, "readiness"));
  EXPECT_TRUE(attention_[static_cast<size_t>(survivor)]->Running());
  ExpectClusterMatchesEmbedded(CheckRequests());
}

INSTANTIATE_TEST_SUITE_P(Signals, AttentionWorkerFailoverTest, ::testing::Values(SIGKILL, SIGTERM),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::string(info.param == SIGKILL ? "Sigkill" : "Sigterm");
                         });

// Expert replicas (docs/architecture.md#expert-replicas-and-failover): four expert workers hold two
// copies of two shards (workers 0 and 2 hold shard 0, workers 1 and 3 shard 1). An expert worker
// that dies mid-stream loses no request: the attention worker re-sends its part of each round to the
// other copy, and every output is embedded mode's, bit for bit.
constexpr int kReplicatedStreams = 32;
constexpr int kReplicatedMaxNewTokens = 48;

class ReplicatedExpertFailoverTest : public FailoverTest {
 protected:
  ClusterShape Shape() const override { return {.expert_workers = 4, .expert_replicas = 2}; }

  // 32 concurrent greedy streams; once each has its first token, `hit` is called on expert worker 1
  // (shard 1, first copy); every stream must then finish exactly as embedded mode does, and the
  // attention worker's log must show `how` it coped.
  void ExpectNoStreamFailsWhen(const std::function<void()>& hit, const ::testing::Matcher<std::string>& how) {
    std::vector<v1::GenerateRequest> requests;
    for (int i = 0; i < kReplicatedStreams; ++i)
      requests.push_back(StreamRequest(i, kReplicatedMaxNewTokens));
    const absl::StatusOr<std::vector<GenerateResult>> expected =
        moe::testing::GenerateEmbedded(model_, requests);
    ASSERT_TRUE(expected.ok()) << expected.status();
    InFlightStreams streams(router_address_, kReplicatedStreams, kReplicatedMaxNewTokens);
    ASSERT_TRUE(streams.WaitAllStarted(absl::Seconds(120))) << "streams did not start";
    hit();
    const std::vector<GenerateResult>& outcomes = streams.Join();
    ASSERT_NO_FATAL_FAILURE(ExpectExactly(outcomes, *expected));
    int unfinished_at_hit = 0;
    for (const GenerateResult& o : outcomes) unfinished_at_hit += o.ended > hit_at_ ? 1 : 0;
    EXPECT_GT(unfinished_at_hit, 0) << "every stream had ended before the worker was hit";
    // The attention worker coped (it says how in its log) and stayed ready throughout.
    EXPECT_THAT(attention_[0]->Log(), how);
    EXPECT_TRUE(moe::testing::IsServing(router_address_, "readiness"));
  }

  // Restarts expert worker 1, waits until the attention worker has connected it again, then kills
  // the other copy of shard 1 (worker 3): requests still succeed, so worker 1 is back in the placement.
  void ExpectRestartedWorkerRejoins() {
    const size_t connected_before = CountConnected(1);
    ASSERT_NO_FATAL_FAILURE(StartExpert(1));
    const absl::Time deadline = absl::Now() + kStartupTimeout;
    while (CountConnected(1) == connected_before && absl::Now() < deadline)
      absl::SleepFor(absl::Milliseconds(50));
    ASSERT_GT(CountConnected(1), connected_before) << "expert worker 1 did not rejoin\n" << Logs();
    ASSERT_NO_FATAL_FAILURE(KillExpert(3));
    ExpectClusterMatchesEmbedded(CheckRequests());
  }

  // How often the attention worker's log says it connected expert worker `rank`.
  size_t CountConnected(int rank) const {
    const std::string log = attention_[0]->Log();
    const std::string needle = absl::StrCat("expert worker ", rank, " connected");
    size_t count = 0;
    for (size_t at = log.find(needle); at != std::string::npos; at = log.find(needle, at + 1)) ++count;
    return count;
  }

  absl::Time hit_at_;
};

TEST_F(ReplicatedExpertFailoverTest, KilledExpertWorkerLosesNoStreamAndRejoinsAfterRestart) {
  ExpectNoStreamFailsWhen(
      [this] {
        hit_at_ = absl::Now();
        ASSERT_NO_FATAL_FAILURE(KillExpert(1));
      },
      // Usually a round fails first; if the connector's check saw the death
      // first, no round was ever sent to the dead worker.
      ::testing::AnyOf(::testing::HasSubstr("expert worker 1 failed a round, failing over"),
                       ::testing::HasSubstr("expert worker 1 (127.0.0.1")));
  if (HasFatalFailure()) return;
  ExpectRestartedWorkerRejoins();
}

TEST_F(ReplicatedExpertFailoverTest, TerminatedExpertWorkerLosesNoStreamAndRejoinsAfterRestart) {
  ExpectNoStreamFailsWhen(
      [this] {
        hit_at_ = absl::Now();
        ChildProcess& victim = *experts_[1];
        victim.Signal(SIGTERM);
        ASSERT_TRUE(victim.Wait(absl::Seconds(30)).has_value()) << "expert-1 did not exit on SIGTERM";
      },
      ::testing::HasSubstr("expert worker 1 is draining: its shard's other copies take its rounds"));
  if (HasFatalFailure()) return;
  ExpectRestartedWorkerRejoins();
}

// Scaling while serving (issue 8 item 7): the router reads its attention workers from a file (what
// `moectl cluster scale` rewrites). Under 32 streams on attention worker 0, worker 1 is started and
// added: new streams go to it; expert worker 3 (joinable) is started and joins the placement of
// both. Then expert worker 3 leaves the placement and is stopped with SIGTERM, and worker 0 is taken
// out of the file and stopped with SIGTERM: its streams migrate to worker 1. No request fails and
// every output is embedded mode's, bit for bit.
class ElasticAttentionWorkersTest : public FailoverTest {
 protected:
  ClusterShape Shape() const override {
    return {.attention_workers = 1, .attention_workers_file = true, .joinable_expert_workers = 1};
  }
};

TEST_F(ElasticAttentionWorkersTest, AddingAndRemovingAnAttentionWorkerUnder32StreamsFailsNoRequest) {
  constexpr int kStreams = 32;
  constexpr int kLaterStreams = 8;
  std::vector<v1::GenerateRequest> requests = InFlightStreams::StreamRequests(kStreams, 48);
  for (int i = 1; i < kStreams; i += 2) {  // every other stream sampled, seeded
    requests[static_cast<size_t>(i)].mutable_sampling()->set_temperature(0.8f);
    requests[static_cast<size_t>(i)].mutable_sampling()->set_seed(static_cast<uint64_t>(2000 + i));
  }
  // Long enough to still run on the new worker when the old one stops.
  std::vector<v1::GenerateRequest> later;
  for (int i = 0; i < kLaterStreams; ++i) later.push_back(StreamRequest(40 + i, 160));
  const absl::StatusOr<std::vector<GenerateResult>> expected =
      moe::testing::GenerateEmbedded(model_, requests);
  ASSERT_TRUE(expected.ok()) << expected.status();
  const absl::StatusOr<std::vector<GenerateResult>> expected_later =
      moe::testing::GenerateEmbedded(model_, later);
  ASSERT_TRUE(expected_later.ok()) << expected_later.status();

  InFlightStreams streams(router_address_, requests);
  ASSERT_TRUE(streams.WaitAllStarted(absl::Seconds(120))) << "streams did not start";
  // Add attention worker 1 once it serves.
  ASSERT_NO_FATAL_FAILURE(StartAttention(1));
  const absl::Status up =
      moe::testing::WaitForHealth(attention_addresses_[1], "readiness", true, absl::Now() + kStartupTimeout);
  ASSERT_TRUE(up.ok()) << up << "\n" << Logs();
  ASSERT_NO_FATAL_FAILURE(WriteAttentionWorkersFile(attention_addresses_));
  ASSERT_TRUE(WaitForRouterAttentionWorkers(2)) << Logs();
  EXPECT_THAT(router_->Log(), ::testing::HasSubstr("attention worker " + attention_addresses_[1] + " added"));

  // New streams go to the new worker (it has every KV block free).
  InFlightStreams more(router_address_, later);
  ASSERT_TRUE(more.WaitAllStarted(absl::Seconds(120))) << "later streams did not start";
  EXPECT_GT(AttentionLoad(1).num_running(), 0) << "the added worker runs nothing";

  // Add expert worker 3 (joinable: a copy of shard 0) to both attention workers' placement, then
  // remove it: out of the placement first, then SIGTERM.
  const int joined = kNumExpertWorkers;
  ASSERT_NO_FATAL_FAILURE(StartExpert(joined));
  const absl::Status expert_up =
      moe::testing::WaitForHealth(ExpertAddress(joined), "readiness", true, absl::Now() + kStartupTimeout);
  ASSERT_TRUE(expert_up.ok()) << expert_up << "\n" << Logs();
  const std::vector<std::pair<int, int>> copies = ShardCopiesOn(joined);
  for (int a = 0; a < 2; ++a) {
    const grpc::Status switched = SetPlacement(a, 1, copies);
    ASSERT_TRUE(switched.ok()) << "attention-" << a << ": " << switched.error_message() << "\n" << Logs();
  }
  for (int a = 0; a < 2; ++a) {
    const grpc::Status switched = SetPlacement(a, 2, {});
    ASSERT_TRUE(switched.ok()) << "attention-" << a << ": " << switched.error_message();
  }
  experts_[static_cast<size_t>(joined)]->Signal(SIGTERM);
  ASSERT_TRUE(experts_[static_cast<size_t>(joined)]->Wait(absl::Seconds(30)).has_value())
      << "expert-3 did not exit";

  // Remove worker 0: out of the router's set first, then SIGTERM (its streams migrate to worker 1).
  ASSERT_NO_FATAL_FAILURE(WriteAttentionWorkersFile({attention_addresses_[1]}));
  ASSERT_TRUE(WaitForRouterAttentionWorkers(1)) << Logs();
  const int left_on_0 = AttentionLoad(0).num_running();
  attention_[0]->Signal(SIGTERM);
  ASSERT_TRUE(attention_[0]->Wait(absl::Seconds(30)).has_value()) << "attention-0 did not exit";

  ASSERT_NO_FATAL_FAILURE(ExpectExactly(streams.Join(), *expected));
  ASSERT_NO_FATAL_FAILURE(ExpectExactly(more.Join(), *expected_later));
  std::cerr << left_on_0 << " stream(s) were still on attention-0 when it stopped\n";
  if (left_on_0 > 0) {
    EXPECT_THAT(router_->Log(), ::testing::HasSubstr("migrating it with"));
  }
  EXPECT_TRUE(moe::testing::IsServing(router_address_, "readiness"));
  ExpectClusterMatchesEmbedded(CheckRequests());
}

}  // namespace
}  // namespace moe
