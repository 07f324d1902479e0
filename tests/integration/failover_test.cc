// Worker failure at the router level (issue 3, "Worker failure"): a router, one attention worker and
// three expert workers run as separate processes on 127.0.0.1 (started with the process helper, not
// `moectl cluster up`, whose supervisor tears the whole cluster down when one child dies). One
// expert worker is killed with SIGKILL while streams are in flight; the tests check that every
// stream ends UNAVAILABLE within 10 s, that the router's readiness turns NOT_SERVING and new
// requests fail fast, and that restarting the worker (same rank, same port) brings the cluster back
// to serving the embedded engine's exact greedy tokens without restarting anything else.
//
// Synchronisation is by polling with deadlines (health checks, GetLoad, stream reads), never sleeps.
#include <csignal>
#include <cstdint>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/engine/engine.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "moe/v1/attention.grpc.pb.h"
#include "moe/v1/generate.grpc.pb.h"
#include "tests/services/process_helper.h"
#include "tests/util/test_models.h"

namespace moe {
namespace {

using moe::testing::ChildProcess;

constexpr int kNumExpertWorkers = 3;
constexpr int kVictimRank = 1;  // the middle shard: experts [42, 85) of every layer
// Long enough that no stream can finish before the kill (tiny's context is 4096 tokens).
constexpr int kLongMaxNewTokens = 4000;
const absl::Duration kStartupTimeout = absl::Seconds(120);

std::vector<int32_t> Prompt(int64_t length, uint32_t seed) {
  std::vector<int32_t> ids;
  uint32_t x = seed * 2654435761u + 7u;
  for (int64_t i = 0; i < length; ++i) {
    x = x * 1664525u + 1013904223u;
    ids.push_back(static_cast<int32_t>(x % 151643u));
  }
  return ids;
}

v1::GenerateRequest GreedyRequest(const std::vector<int32_t>& prompt, int max_new_tokens) {
  v1::GenerateRequest request;
  for (int32_t id : prompt) request.mutable_token_ids()->add_ids(id);
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_sampling()->set_max_new_tokens(max_new_tokens);
  request.mutable_sampling()->set_ignore_eos(true);
  return request;
}

struct Outcome {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  grpc::Status status;
  absl::Time ended;
};

// One blocking Generate call to completion.
Outcome Generate(const std::string& router, const v1::GenerateRequest& request, absl::Duration deadline) {
  auto stub = v1::Generation::NewStub(grpc::CreateChannel(router, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  auto reader = stub->Generate(&context, request);
  Outcome out;
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    for (const auto& token : response.tokens()) {
      out.tokens.push_back(token.token_id());
      out.logprobs.push_back(token.logprob());
    }
    if (response.finished()) out.finish = response.finish_reason();
  }
  out.status = reader->Finish();
  out.ended = absl::Now();
  return out;
}

// The embedded engine's greedy tokens and logprobs for `prompts`, all in one batch.
std::vector<Outcome> Embedded(const std::string& model_dir, const std::vector<std::vector<int32_t>>& prompts,
                              int max_new_tokens) {
  auto engine = engine::Engine::CreateEmbedded(model_dir, engine::EngineOptions{});
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return {};
  for (size_t i = 0; i < prompts.size(); ++i) {
    engine::GenerationRequest request;
    request.id = std::to_string(i);
    request.prompt = prompts[i];
    request.sampling.temperature = 0.0;
    request.max_new_tokens = max_new_tokens;
    request.ignore_eos = true;
    EXPECT_TRUE((*engine)->AddRequest(request).ok());
  }
  std::vector<Outcome> out(prompts.size());
  while ((*engine)->HasWork()) {
    for (const engine::TokenEvent& event : (*engine)->Step()) {
      if (event.token_id < 0) continue;
      Outcome& o = out[std::stoul(event.request_id)];
      o.tokens.push_back(event.token_id);
      o.logprobs.push_back(event.logprob);
    }
  }
  return out;
}

// Router + 1 attention worker + kNumExpertWorkers expert workers on free ports, with the same
// flags `moectl cluster up` gives them (so the timeouts under test are the product's defaults).
class FailoverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = moe::testing::TestModelDir("tiny", "bf16");
    log_dir_ = moe::testing::MakeTempDir("failover-logs");
    for (int r = 0; r < kNumExpertWorkers; ++r) expert_ports_.push_back(moe::testing::FreePort());
    experts_.resize(kNumExpertWorkers);
    for (int r = 0; r < kNumExpertWorkers; ++r) ASSERT_NO_FATAL_FAILURE(StartExpert(r));
    std::vector<std::string> expert_addresses;
    for (int r = 0; r < kNumExpertWorkers; ++r) expert_addresses.push_back(ExpertAddress(r));
    attention_address_ = moe::testing::LocalAddress(moe::testing::FreePort());
    auto attention =
        ChildProcess::Start(moe::testing::BinaryPath("moe-attention-worker"),
                            {"--model=" + model_, "--rank=0", "--num_attention_workers=1",
                             "--expert_workers=" + absl::StrJoin(expert_addresses, ","),
                             "--listen=" + attention_address_, "--metrics_port=0", "--transport=ucx"},
                            log_dir_ + "/attention-0.log");
    ASSERT_TRUE(attention.ok()) << attention.status();
    attention_ = *std::move(attention);
    router_address_ = moe::testing::LocalAddress(moe::testing::FreePort());
    auto router = ChildProcess::Start(moe::testing::BinaryPath("moe-router"),
                                      {"--model=" + model_, "--attention_workers=" + attention_address_,
                                       "--expert_workers=" + absl::StrJoin(expert_addresses, ","),
                                       "--listen=" + router_address_, "--metrics_port=0"},
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
    attention_.reset();
    experts_.clear();
  }

  void StartExpert(int rank) {
    auto child =
        ChildProcess::Start(moe::testing::BinaryPath("moe-expert-worker"),
                            {"--model=" + model_, absl::StrCat("--rank=", rank),
                             absl::StrCat("--num_expert_workers=", kNumExpertWorkers),
                             "--listen=" + ExpertAddress(rank), "--metrics_port=0", "--transport=ucx"},
                            absl::StrCat(log_dir_, "/expert-", rank, ".log"));
    ASSERT_TRUE(child.ok()) << child.status();
    experts_[static_cast<size_t>(rank)] = *std::move(child);
  }

  // SIGKILL, then reap (so the port is released before a restart).
  void KillExpert(int rank) {
    ChildProcess& victim = *experts_[static_cast<size_t>(rank)];
    victim.Signal(SIGKILL);
    ASSERT_TRUE(victim.Wait(absl::Seconds(10)).has_value()) << "expert-" << rank << " survived SIGKILL";
  }

  std::string ExpertAddress(int rank) const {
    return moe::testing::LocalAddress(expert_ports_[static_cast<size_t>(rank)]);
  }

  v1::WorkerLoad AttentionLoad() {
    auto stub = v1::AttentionWorker::NewStub(
        grpc::CreateChannel(attention_address_, grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::WorkerLoad load;
    const grpc::Status status = stub->GetLoad(&context, v1::GetLoadRequest(), &load);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return load;
  }

  std::string Logs() const {
    std::string out;
    auto add = [&out](const std::string& name, const std::unique_ptr<ChildProcess>& child) {
      if (child) absl::StrAppend(&out, "==== ", name, " ====\n", child->Log(), "\n");
    };
    add("router", router_);
    add("attention-0", attention_);
    for (size_t r = 0; r < experts_.size(); ++r) add(absl::StrCat("expert-", r), experts_[r]);
    return out;
  }

  std::string model_;
  std::string log_dir_;
  std::vector<int> expert_ports_;
  std::string attention_address_;
  std::string router_address_;
  std::vector<std::unique_ptr<ChildProcess>> experts_;
  std::unique_ptr<ChildProcess> attention_;
  std::unique_ptr<ChildProcess> router_;
};

// Streams started in background threads; Wait() blocks until each has received its first token.
class InFlightStreams {
 public:
  InFlightStreams(const std::string& router, int count) : outcomes_(static_cast<size_t>(count)) {
    for (int i = 0; i < count; ++i) {
      threads_.emplace_back([this, router, i] { Run(router, i); });
    }
  }
  ~InFlightStreams() { Join(); }

  bool WaitAllStarted(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto all = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return started_ + ended_early_ == static_cast<int>(outcomes_.size());
    };
    return mu_.AwaitWithTimeout(absl::Condition(&all), timeout) && ended_early_ == 0;
  }

  const std::vector<Outcome>& Join() {
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
    return outcomes_;
  }

 private:
  void Run(const std::string& router, int i) {
    auto stub = v1::Generation::NewStub(grpc::CreateChannel(router, grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    // A bound so that a hang fails the test instead of blocking it; far above the 10 s asserted.
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
    auto reader = stub->Generate(
        &context, GreedyRequest(Prompt(4 + 3 * i, 500u + static_cast<uint32_t>(i)), kLongMaxNewTokens));
    Outcome& out = outcomes_[static_cast<size_t>(i)];
    bool counted = false;
    v1::GenerateResponse response;
    while (reader->Read(&response)) {
      for (const auto& token : response.tokens()) out.tokens.push_back(token.token_id());
      if (response.finished()) out.finish = response.finish_reason();
      if (!counted && !out.tokens.empty()) {
        counted = true;
        absl::MutexLock lock(&mu_);
        ++started_;
      }
    }
    out.status = reader->Finish();
    out.ended = absl::Now();
    if (!counted) {
      absl::MutexLock lock(&mu_);
      ++ended_early_;
    }
  }

  std::vector<Outcome> outcomes_;
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
  const std::vector<Outcome>& outcomes = streams.Join();
  for (int i = 0; i < kNumStreams; ++i) {
    const Outcome& o = outcomes[static_cast<size_t>(i)];
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
    const Outcome o = Generate(router_address_, GreedyRequest(Prompt(5, 900u + i), 8), absl::Seconds(30));
    EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE) << o.status.error_message();
    EXPECT_TRUE(o.tokens.empty());
    EXPECT_LT(o.ended - sent, absl::Seconds(2)) << "request " << i << " was not refused fast";
  }
  // Still refusing: the outage lasts until the worker is back, with nothing restarted.
  EXPECT_FALSE(moe::testing::IsServing(router_address_, "readiness"));
  EXPECT_TRUE(router_->Running());
  EXPECT_TRUE(attention_->Running());
}

TEST_F(FailoverTest, RestartedExpertWorkerRestoresServingWithEmbeddedGreedyTokens) {
  const std::string model = model_;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 3; ++i) prompts.push_back(Prompt(3 + 9 * i, 700u + static_cast<uint32_t>(i)));
  constexpr int kMaxNew = 12;
  const std::vector<Outcome> expected = Embedded(model, prompts, kMaxNew);
  ASSERT_EQ(expected.size(), prompts.size());

  {
    InFlightStreams streams(router_address_, 2);
    ASSERT_TRUE(streams.WaitAllStarted(absl::Seconds(60)));
    ASSERT_NO_FATAL_FAILURE(KillExpert(kVictimRank));
    for (const Outcome& o : streams.Join()) {
      EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE) << o.status.error_message();
    }
  }
  ASSERT_TRUE(
      moe::testing::WaitForHealth(router_address_, "readiness", false, absl::Now() + absl::Seconds(10)).ok());

  const pid_t router_pid = router_->pid();
  const pid_t attention_pid = attention_->pid();
  const absl::Time restarted = absl::Now();
  ASSERT_NO_FATAL_FAILURE(StartExpert(kVictimRank));
  const absl::Status serving =
      moe::testing::WaitForHealth(router_address_, "readiness", true, absl::Now() + kStartupTimeout);
  ASSERT_TRUE(serving.ok()) << serving;
  std::cerr << "router SERVING " << absl::FormatDuration(absl::Now() - restarted) << " after the restart\n";
  // Nothing else was restarted.
  EXPECT_EQ(router_->pid(), router_pid);
  EXPECT_TRUE(router_->Running());
  EXPECT_EQ(attention_->pid(), attention_pid);
  EXPECT_TRUE(attention_->Running());
  // The failed sequences gave back their KV blocks (polled: freeing happens on the worker's step).
  v1::WorkerLoad load = AttentionLoad();
  for (const absl::Time deadline = absl::Now() + absl::Seconds(10);
       (load.num_free_kv_blocks() != load.num_kv_blocks() || load.num_running() != 0) &&
       absl::Now() < deadline;) {
    load = AttentionLoad();
  }
  EXPECT_EQ(load.num_free_kv_blocks(), load.num_kv_blocks());
  EXPECT_EQ(load.num_running(), 0);

  std::vector<Outcome> actual(prompts.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i) {
    threads.emplace_back([&, i] {
      actual[i] = Generate(router_address_, GreedyRequest(prompts[i], kMaxNew), absl::Seconds(60));
    });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(actual[i].status.ok()) << i << ": " << actual[i].status.error_message();
    EXPECT_EQ(actual[i].finish, v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(actual[i].tokens, expected[i].tokens) << "request " << i;
    EXPECT_EQ(actual[i].logprobs, expected[i].logprobs) << "request " << i;
  }
}

}  // namespace
}  // namespace moe
