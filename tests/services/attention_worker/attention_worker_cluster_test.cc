// Integration: real moe-expert-worker and moe-attention-worker processes on 127.0.0.1 over UCX,
// compared with the embedded engine on the same model.
#include <atomic>
#include <cmath>
#include <csignal>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <sys/wait.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "moe/v1/attention.grpc.pb.h"
#include "moe/v1/expert_control.grpc.pb.h"
#include "tests/services/process_helper.h"
#include "tests/util/generation/greedy_generation.h"
#include "tests/util/http_get.h"
#include "tests/util/test_models.h"

namespace moe::services {
namespace {

using moe::testing::ChildProcess;
using moe::testing::Embedded;
using moe::testing::Generated;
using moe::testing::GreedyRequest;
using moe::testing::Prompts;

class Cluster {
 public:
  // `expert_flags` go to every expert worker. `joinable` more expert workers (ranks num_experts...)
  // are named to the attention worker as --joinable_expert_workers but not started (StartJoinable).
  Cluster(const std::string& model, int num_experts, std::vector<std::string> expert_flags = {},
          int joinable = 0)
      : model_(model), expert_flags_(std::move(expert_flags)), num_home_(num_experts) {
    for (int r = 0; r < num_experts + joinable; ++r) expert_ports_.push_back(moe::testing::FreePort());
    for (int r = 0; r < num_experts; ++r) StartExpert(r);
    for (int r = 0; r < num_experts; ++r) {
      EXPECT_TRUE(
          moe::testing::WaitForHealth(ExpertAddress(r), "readiness", true, absl::Now() + absl::Seconds(60))
              .ok());
    }
    std::vector<std::string> addresses, joinable_addresses;
    for (int r = 0; r < num_experts; ++r) addresses.push_back(ExpertAddress(r));
    for (int r = num_experts; r < num_experts + joinable; ++r) joinable_addresses.push_back(ExpertAddress(r));
    attention_port_ = moe::testing::FreePort();
    log_ = moe::testing::MakeTempDir("attention-log") + "/attention.log";
    std::vector<std::string> args = {"--model",
                                     model_,
                                     "--rank",
                                     "0",
                                     "--expert_workers",
                                     absl::StrJoin(addresses, ","),
                                     "--listen",
                                     AttentionAddress(),
                                     "--metrics_port",
                                     "0",
                                     "--moe_timeout_seconds",
                                     "5",
                                     "--num_kv_blocks",
                                     "512",
                                     "--insecure"};
    if (joinable > 0) {
      args.push_back("--joinable_expert_workers");
      args.push_back(absl::StrJoin(joinable_addresses, ","));
    }
    auto child = ChildProcess::Start(moe::testing::BinaryPath("moe-attention-worker"), args, log_);
    EXPECT_TRUE(child.ok());
    attention_ = *std::move(child);
    absl::Status ready =
        moe::testing::WaitForHealth(AttentionAddress(), "readiness", true, absl::Now() + absl::Seconds(60));
    EXPECT_TRUE(ready.ok()) << ready << "\n" << attention_->Log();
    stub_ = v1::AttentionWorker::NewStub(
        grpc::CreateChannel(AttentionAddress(), grpc::InsecureChannelCredentials()));
  }

  void StartExpert(int rank, const std::vector<std::string>& extra_args = {}) {
    std::vector<std::string> args = {"--model",
                                     model_,
                                     "--rank",
                                     std::to_string(rank),
                                     "--num_expert_workers",
                                     std::to_string(num_home_),
                                     "--listen",
                                     ExpertAddress(rank),
                                     "--metrics_port",
                                     "0",
                                     "--insecure"};
    args.insert(args.end(), expert_flags_.begin(), expert_flags_.end());
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    auto child = ChildProcess::Start(moe::testing::BinaryPath("moe-expert-worker"), args);
    EXPECT_TRUE(child.ok());
    if (experts_.size() <= static_cast<size_t>(rank)) experts_.resize(static_cast<size_t>(rank) + 1);
    experts_[static_cast<size_t>(rank)] = *std::move(child);
  }

  std::string ExpertAddress(int rank) const { return moe::testing::LocalAddress(expert_ports_[rank]); }
  std::string AttentionAddress() const { return moe::testing::LocalAddress(attention_port_); }
  ChildProcess& expert(int rank) { return *experts_[static_cast<size_t>(rank)]; }
  v1::AttentionWorker::Stub& stub() { return *stub_; }
  std::string log() const { return attention_->Log(); }

  Generated Generate(const v1::AttentionGenerateRequest& request) {
    return moe::testing::Generate(*stub_, request, absl::Seconds(180));
  }

  v1::WorkerLoad Load() {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::WorkerLoad load;
    EXPECT_TRUE(stub_->GetLoad(&context, v1::GetLoadRequest(), &load).ok());
    return load;
  }

 private:
  std::string model_;
  std::vector<std::string> expert_flags_;
  int num_home_ = 0;
  std::vector<int> expert_ports_;
  int attention_port_ = 0;
  std::string log_;
  std::vector<std::unique_ptr<ChildProcess>> experts_;
  std::unique_ptr<ChildProcess> attention_;  // destroyed first: stops before the experts
  std::unique_ptr<v1::AttentionWorker::Stub> stub_;
};

grpc::Status SetPlacement(v1::AttentionWorker::Stub& stub, uint64_t version,
                          const std::vector<std::pair<int, int>>& extras) {
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
  return stub.SetExpertPlacement(&context, request, &response);
}

// The expert load balancer across processes (docs/architecture.md#expert-load-balancer): a switch is
// refused until the expert worker holds the copies, then made while a stream runs; the stream's
// tokens and logprobs stay embedded mode's.
TEST(AttentionWorkerBalancerTest, SwitchesPlacementMidStreamOnlyOnceTheExpertsAreLoaded) {
  const std::string& model = moe::testing::TestModelDir("tiny+skewed", "bf16");
  Cluster cluster(model, 2, {"--extra_expert_budget_bytes", std::to_string(int64_t{64} << 20)});
  const std::vector<int32_t> prompt = Prompts()[2];
  constexpr int kTokens = 256;
  const Generated want = Embedded(model, prompt, kTokens);
  Generated got;
  std::atomic<bool> finished{false};
  std::thread stream([&] {
    got = cluster.Generate(GreedyRequest("long", prompt, kTokens));
    finished = true;
  });

  // The hot experts 0..3 live on worker 0; copy them to worker 1.
  const std::vector<std::pair<int, int>> copies = {{0, 1}, {1, 1}, {2, 1}, {3, 1}};
  grpc::Status refused = SetPlacement(cluster.stub(), 1, copies);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << refused.error_message();
  EXPECT_NE(refused.error_message().find("does not hold expert 0"), std::string::npos)
      << refused.error_message();
  refused = SetPlacement(cluster.stub(), 1, {{500, 1}});
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(refused.error_message().find("extras[0].expert"), std::string::npos) << refused.error_message();
  refused = SetPlacement(cluster.stub(), 1, {{0, 0}});
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(refused.error_message().find("already holds"), std::string::npos) << refused.error_message();

  {
    auto expert = v1::ExpertControl::NewStub(
        grpc::CreateChannel(cluster.ExpertAddress(1), grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    v1::LoadExtraExpertsRequest request;
    request.set_placement_version(1);
    for (int e = 0; e < 4; ++e) request.add_experts(e);
    v1::LoadExtraExpertsResponse response;
    ASSERT_TRUE(expert->LoadExtraExperts(&context, request, &response).ok());
  }
  const grpc::Status switched = SetPlacement(cluster.stub(), 1, copies);
  EXPECT_TRUE(switched.ok()) << switched.error_message() << "\n" << cluster.log();
  EXPECT_FALSE(finished.load()) << "the switch should come mid-stream (make kTokens larger)";
  refused = SetPlacement(cluster.stub(), 1, copies);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(refused.error_message().find("placement_version"), std::string::npos) << refused.error_message();
  stream.join();
  ASSERT_TRUE(got.status.ok()) << got.status.error_message() << "\n" << cluster.log();
  EXPECT_EQ(got.tokens, want.tokens);
  EXPECT_EQ(got.logprobs, want.logprobs);
  // After the switch: still embedded mode's bits, now with the copies in use.
  const Generated after = cluster.Generate(GreedyRequest("after", Prompts()[0], 16));
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(after.tokens, Embedded(model, Prompts()[0], 16).tokens);

  // The balancer's input (`moectl cluster rebalance`): GetLoad's rows per expert and per expert
  // worker since start, and the placement version in use.
  v1::WorkerLoad load;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(cluster.stub().GetLoad(&context, v1::GetLoadRequest(), &load).ok());
  }
  EXPECT_EQ(load.expert_placement_version(), 1u);
  ASSERT_EQ(load.expert_worker_rows_total_size(), 2);
  ASSERT_GT(load.expert_rows_total_size(), 4);
  uint64_t expert_sum = 0, worker_sum = 0, hot = 0;
  for (int e = 0; e < load.expert_rows_total_size(); ++e) expert_sum += load.expert_rows_total(e);
  for (int e = 0; e < 4; ++e) hot += load.expert_rows_total(e);
  for (int w = 0; w < 2; ++w) worker_sum += load.expert_worker_rows_total(w);
  EXPECT_GT(expert_sum, 0u);
  EXPECT_EQ(expert_sum, worker_sum);  // every row of an expert goes to one of its hosts
  EXPECT_GT(load.expert_worker_rows_total(1), 0u);
  // The skewed model's hot experts 0..3 get well over their share.
  EXPECT_GT(static_cast<double>(hot) / static_cast<double>(expert_sum),
            2.0 * 4 / static_cast<double>(load.expert_rows_total_size()));
  {
    auto expert = v1::ExpertControl::NewStub(
        grpc::CreateChannel(cluster.ExpertAddress(1), grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    v1::ExpertWorkerInfo info;
    ASSERT_TRUE(expert->GetInfo(&context, v1::GetInfoRequest(), &info).ok());
    EXPECT_GT(info.expert_bytes(), 0);
    EXPECT_EQ(info.extra_expert_budget_bytes(), int64_t{64} << 20);
  }
  // Monotonic: another request only adds.
  ASSERT_TRUE(cluster.Generate(GreedyRequest("more", Prompts()[1], 4)).status.ok());
  v1::WorkerLoad later;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(cluster.stub().GetLoad(&context, v1::GetLoadRequest(), &later).ok());
  }
  ASSERT_EQ(later.expert_rows_total_size(), load.expert_rows_total_size());
  uint64_t later_sum = 0;
  for (int e = 0; e < later.expert_rows_total_size(); ++e) {
    EXPECT_GE(later.expert_rows_total(e), load.expert_rows_total(e)) << "expert " << e;
    later_sum += later.expert_rows_total(e);
  }
  EXPECT_GT(later_sum, expert_sum);
}

grpc::Status LoadExtras(const std::string& address, uint64_t version, const std::vector<int32_t>& experts,
                        std::optional<uint64_t> replaces) {
  auto stub = v1::ExpertControl::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  v1::LoadExtraExpertsRequest request;
  request.set_placement_version(version);
  if (replaces.has_value()) request.set_replaces_version(*replaces);
  for (int32_t e : experts) request.add_experts(e);
  v1::LoadExtraExpertsResponse response;
  return stub->LoadExtraExperts(&context, request, &response);
}

grpc::Status SetPlacementReplacing(v1::AttentionWorker::Stub& stub, uint64_t version,
                                   const std::vector<std::pair<int, int>>& extras, uint64_t replaces) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  v1::SetExpertPlacementRequest request;
  request.set_placement_version(version);
  request.set_replaces_version(replaces);
  for (const auto& [expert, worker] : extras) {
    v1::ExtraExpertCopy* copy = request.add_extras();
    copy->set_expert(expert);
    copy->set_worker(worker);
  }
  v1::SetExpertPlacementResponse response;
  return stub.SetExpertPlacement(&context, request, &response);
}

std::vector<int32_t> ExtraExpertsOf(const std::string& address) {
  auto stub = v1::ExpertControl::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  v1::ExpertWorkerInfo info;
  EXPECT_TRUE(stub->GetInfo(&context, v1::GetInfoRequest(), &info).ok());
  return std::vector<int32_t>(info.extra_experts().begin(), info.extra_experts().end());
}

// Two writers of the placement (`moectl cluster scale` and `moectl cluster rebalance`, or two
// balancers) that read the same state pick the same next version. Each step is a compare-and-set on
// the version read, so the second writer is refused (ABORTED naming replaces_version) instead of
// replacing the first one's extra set (freeing copies the first one's placement routes to) or putting
// its own placement under the same version number. Without replaces_version the old ordering rules
// let exactly that through: the same-version load is accepted.
TEST(AttentionWorkerBalancerTest, TwoWritersOfOneVersionCannotMixPlacementsOrFreeEachOthersCopies) {
  const std::string& model = moe::testing::TestModelDir("tiny", "bf16");
  Cluster cluster(model, 2, {"--extra_expert_budget_bytes", std::to_string(int64_t{64} << 20)});
  // Worker 1 of 2 holds [half, num_experts); both writers read version 0 everywhere and no extras.
  // Writer A copies experts 0, 1 to worker 1; writer B copies experts 2, 3 there.
  ASSERT_TRUE(LoadExtras(cluster.ExpertAddress(1), 1, {0, 1}, 0).ok());
  const grpc::Status b_load = LoadExtras(cluster.ExpertAddress(1), 1, {2, 3}, 0);
  EXPECT_EQ(b_load.error_code(), grpc::StatusCode::ABORTED) << b_load.error_message();
  EXPECT_NE(b_load.error_message().find("replaces_version: 0"), std::string::npos) << b_load.error_message();
  EXPECT_EQ(ExtraExpertsOf(cluster.ExpertAddress(1)), std::vector<int32_t>({0, 1}));
  // The old rule alone (no replaces_version: same version allowed) would have replaced A's set.
  // A switches; B's switch under the same version is refused by the ordering rule, and under a higher
  // one by the compare-and-set (B read version 0).
  const std::vector<std::pair<int, int>> a_copies = {{0, 1}, {1, 1}};
  const grpc::Status a_switch = SetPlacementReplacing(cluster.stub(), 1, a_copies, 0);
  ASSERT_TRUE(a_switch.ok()) << a_switch.error_message() << "\n" << cluster.log();
  const grpc::Status b_switch = SetPlacementReplacing(cluster.stub(), 2, {}, 0);
  EXPECT_EQ(b_switch.error_code(), grpc::StatusCode::ABORTED) << b_switch.error_message();
  EXPECT_NE(b_switch.error_message().find("replaces_version: 0 is not the placement version in use, 1"),
            std::string::npos)
      << b_switch.error_message();
  EXPECT_EQ(cluster.Load().expert_placement_version(), 1u);
  // A's placement is in use and its copies are held: requests keep embedded mode's bits.
  const Generated got = cluster.Generate(GreedyRequest("after", Prompts()[0], 16));
  ASSERT_TRUE(got.status.ok()) << got.status.error_message() << "\n" << cluster.log();
  EXPECT_EQ(got.tokens, Embedded(model, Prompts()[0], 16).tokens);
  // A writer that read the current versions goes ahead: B claims worker 1 (same set, new version:
  // nothing is loaded again), then switches.
  ASSERT_TRUE(LoadExtras(cluster.ExpertAddress(1), 2, {0, 1}, 1).ok());
  // A's trim (replacing its own version 1) now comes too late: refused, B's claim stands. Without
  // replaces_version the old rules would let a trim under B's version through.
  const grpc::Status a_trim = LoadExtras(cluster.ExpertAddress(1), 2, {0}, 1);
  EXPECT_EQ(a_trim.error_code(), grpc::StatusCode::ABORTED) << a_trim.error_message();
  EXPECT_NE(a_trim.error_message().find("replaces_version: 1 is not this worker's placement version, 2"),
            std::string::npos)
      << a_trim.error_message();
  EXPECT_EQ(ExtraExpertsOf(cluster.ExpertAddress(1)), std::vector<int32_t>({0, 1}));
  const grpc::Status b_switched = SetPlacementReplacing(cluster.stub(), 2, {{1, 1}}, 1);
  EXPECT_TRUE(b_switched.ok()) << b_switched.error_message();
  EXPECT_EQ(cluster.Load().expert_placement_version(), 2u);
  // Callers that do not set replaces_version keep the old rules.
  EXPECT_TRUE(SetPlacement(cluster.stub(), 3, {}).ok());
  EXPECT_TRUE(LoadExtras(cluster.ExpertAddress(1), 3, {}, std::nullopt).ok());
  EXPECT_TRUE(ExtraExpertsOf(cluster.ExpertAddress(1)).empty());
}

// Every expert on both workers: each worker holds the other's whole shard as extra copies, so about
// half of every expert's rows, cold experts included, are computed by a copy loaded at run time
// (LoadExtraExperts) rather than by the home shard. Concurrent streams (so a row's host varies with
// its place in the round) keep embedded mode's tokens and logprobs.
TEST(AttentionWorkerBalancerTest, EveryExpertCopiedToTheOtherWorkerKeepsEmbeddedModesBits) {
  const std::string& model = moe::testing::TestModelDir("tiny+skewed", "bf16");
  Cluster cluster(model, 2, {"--extra_expert_budget_bytes", std::to_string(int64_t{64} << 30)});
  std::vector<std::pair<int, int>> copies;
  for (int w = 0; w < 2; ++w) {
    auto other = v1::ExpertControl::NewStub(
        grpc::CreateChannel(cluster.ExpertAddress(1 - w), grpc::InsecureChannelCredentials()));
    v1::ExpertWorkerInfo info;
    {
      grpc::ClientContext context;
      ASSERT_TRUE(other->GetInfo(&context, v1::GetInfoRequest(), &info).ok());
    }
    auto mine = v1::ExpertControl::NewStub(
        grpc::CreateChannel(cluster.ExpertAddress(w), grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
    v1::LoadExtraExpertsRequest request;
    request.set_placement_version(1);
    for (int e = info.first_expert(); e < info.first_expert() + info.num_experts(); ++e) {
      request.add_experts(e);
      copies.emplace_back(e, w);
    }
    v1::LoadExtraExpertsResponse response;
    const grpc::Status loaded = mine->LoadExtraExperts(&context, request, &response);
    ASSERT_TRUE(loaded.ok()) << loaded.error_message();
  }
  const grpc::Status switched = SetPlacement(cluster.stub(), 1, copies);
  ASSERT_TRUE(switched.ok()) << switched.error_message() << "\n" << cluster.log();

  constexpr int kStreams = 9, kTokens = 160;
  std::vector<Generated> want;
  for (const auto& prompt : Prompts()) want.push_back(Embedded(model, prompt, kTokens));
  std::vector<Generated> got(kStreams);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      got[static_cast<size_t>(i)] = cluster.Generate(
          GreedyRequest(absl::StrCat("s", i), Prompts()[static_cast<size_t>(i) % Prompts().size()], kTokens));
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kStreams; ++i) {
    const Generated& g = got[static_cast<size_t>(i)];
    const Generated& w = want[static_cast<size_t>(i) % want.size()];
    ASSERT_TRUE(g.status.ok()) << i << ": " << g.status.error_message() << "\n" << cluster.log();
    EXPECT_EQ(g.tokens, w.tokens) << "stream " << i;
    EXPECT_EQ(g.logprobs, w.logprobs) << "stream " << i;
  }
  const v1::WorkerLoad load = cluster.Load();
  EXPECT_EQ(load.expert_placement_version(), 1u);
}

// An expert worker joining and leaving a running cluster (issue 8 item 7, docs/operations.md#scaling):
// under 32 streams a joinable worker is started, the placement gives it its shard's experts as
// copies (refused before it is connected), it takes rows, then a placement without it is switched
// to and it is stopped with SIGTERM. No stream fails and every output is embedded mode's.
TEST(ExpertWorkerJoinTest, AJoinedExpertWorkerTakesRowsAndLeavesWithoutFailingAStream) {
  const std::string& model = moe::testing::TestModelDir("tiny", "bf16");
  Cluster cluster(model, 2, {}, /*joinable=*/1);
  constexpr int kStreams = 32, kTokens = 96;
  std::vector<Generated> want;
  for (const auto& prompt : Prompts()) want.push_back(Embedded(model, prompt, kTokens));
  std::vector<Generated> got(kStreams);
  std::vector<std::thread> streams;
  std::atomic<int> finished{0};
  for (int i = 0; i < kStreams; ++i) {
    streams.emplace_back([&, i] {
      got[static_cast<size_t>(i)] = cluster.Generate(GreedyRequest(
          "s" + std::to_string(i), Prompts()[static_cast<size_t>(i) % Prompts().size()], kTokens));
      ++finished;
    });
  }

  // Worker 2 is joinable: it hosts shard 2 mod 2 = 0, experts [0, half).
  auto expert_info = [&](int rank) {
    auto stub = v1::ExpertControl::NewStub(
        grpc::CreateChannel(cluster.ExpertAddress(rank), grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::ExpertWorkerInfo info;
    EXPECT_TRUE(stub->GetInfo(&context, v1::GetInfoRequest(), &info).ok());
    return info;
  };
  const v1::ExpertWorkerInfo shard0 = expert_info(0);
  std::vector<std::pair<int, int>> copies;
  for (int e = shard0.first_expert(); e < shard0.first_expert() + shard0.num_experts(); ++e)
    copies.emplace_back(e, 2);
  grpc::Status refused = SetPlacement(cluster.stub(), 1, copies);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << refused.error_message();
  EXPECT_NE(refused.error_message().find("not connected yet"), std::string::npos) << refused.error_message();
  refused = SetPlacement(cluster.stub(), 1, {{0, 3}});
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << refused.error_message();

  const int metrics_port = moe::testing::FreePort();
  cluster.StartExpert(2, {"--joinable", "--metrics_port", std::to_string(metrics_port)});
  ASSERT_TRUE(moe::testing::WaitForHealth(cluster.ExpertAddress(2), "readiness", true,
                                          absl::Now() + absl::Seconds(60))
                  .ok());
  EXPECT_EQ(expert_info(2).first_expert(), shard0.first_expert());
  // The connector finds it within its backoff (at most 2 s); until then the switch is refused.
  grpc::Status joined = SetPlacement(cluster.stub(), 1, copies);
  for (int i = 0; i < 100 && joined.error_code() == grpc::StatusCode::FAILED_PRECONDITION; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
    joined = SetPlacement(cluster.stub(), 1, copies);
  }
  ASSERT_TRUE(joined.ok()) << joined.error_message() << "\n" << cluster.log();

  // It takes rows: its token counter grows while the streams run.
  auto rows = [&]() -> double {
    absl::StatusOr<std::string> text = moe::testing::HttpGet(metrics_port, "/metrics");
    if (!text.ok()) return -1;
    double sum = 0;
    for (absl::string_view line : absl::StrSplit(*text, '\n')) {
      if (!absl::StartsWith(line, "moe_expert_tokens_total{")) continue;
      double value = 0;
      if (absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &value)) sum += value;
    }
    return sum;
  };
  double taken = 0;
  for (int i = 0; i < 100 && taken <= 0; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
    taken = rows();
  }
  EXPECT_GT(taken, 0) << "the joined expert worker took no rows\n" << cluster.log();

  // Leaving: out of the placement first, then SIGTERM (it drains and exits).
  const grpc::Status left = SetPlacement(cluster.stub(), 2, {});
  ASSERT_TRUE(left.ok()) << left.error_message();
  cluster.expert(2).Signal(SIGTERM);
  const std::optional<int> exited = cluster.expert(2).Wait(absl::Seconds(30));
  ASSERT_TRUE(exited.has_value()) << "the joined expert worker did not exit on SIGTERM";
  EXPECT_TRUE(WIFEXITED(*exited) && WEXITSTATUS(*exited) == 0) << *exited;
  EXPECT_LT(finished.load(), kStreams) << "the streams should outlast the join and the leave (raise kTokens)";

  for (std::thread& stream : streams) stream.join();
  int failed = 0;
  for (int i = 0; i < kStreams; ++i) {
    const Generated& g = got[static_cast<size_t>(i)];
    if (!g.status.ok()) {
      ++failed;
      ADD_FAILURE() << "stream " << i << ": " << g.status.error_message();
      continue;
    }
    const Generated& w = want[static_cast<size_t>(i) % want.size()];
    EXPECT_EQ(g.tokens, w.tokens) << "stream " << i;
    EXPECT_EQ(g.logprobs, w.logprobs) << "stream " << i;
  }
  EXPECT_EQ(failed, 0) << cluster.log();
  const Generated after = cluster.Generate(GreedyRequest("after", Prompts()[0], 16));
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(after.tokens, Embedded(model, Prompts()[0], 16).tokens);
}

// Bad joinable flags end the process with a message naming the flag.
TEST(ExpertWorkerJoinTest, BadJoinableFlagsAreRefusedNamingTheFlag) {
  const std::string& model = moe::testing::TestModelDir("tiny", "bf16");
  const std::string dir = moe::testing::MakeTempDir("join-flags");
  auto run = [&](const std::string& binary, const std::vector<std::string>& args, const std::string& name) {
    auto child = ChildProcess::Start(moe::testing::BinaryPath(binary), args, dir + "/" + name + ".log");
    EXPECT_TRUE(child.ok());
    const std::optional<int> status = (*child)->Wait(absl::Seconds(60));
    EXPECT_TRUE(status.has_value() && WIFEXITED(*status) && WEXITSTATUS(*status) != 0) << (*child)->Log();
    return (*child)->Log();
  };
  const std::string listen = moe::testing::LocalAddress(moe::testing::FreePort());
  // A joinable expert worker's rank is past the home workers'.
  std::string log = run("moe-expert-worker",
                        {"--model", model, "--rank", "1", "--num_expert_workers", "2", "--joinable",
                         "--listen", listen, "--metrics_port", "0", "--insecure"},
                        "expert");
  EXPECT_NE(log.find("--rank: a --joinable worker's rank must be in [2, 1000)"), std::string::npos) << log;
  log = run(
      "moe-attention-worker",
      {"--model", model, "--rank", "0", "--expert_workers", listen, "--joinable_expert_workers", "nohost",
       "--listen", moe::testing::LocalAddress(moe::testing::FreePort()), "--metrics_port", "0", "--insecure"},
      "attention");
  EXPECT_NE(log.find("joinable_expert_workers"), std::string::npos) << log;
}

class AttentionWorkerClusterTest : public ::testing::TestWithParam<int> {};

TEST_P(AttentionWorkerClusterTest, GreedyTokensAndLogprobsEqualEmbeddedMode) {
  const std::string& model = moe::testing::TestModelDir("tiny", "bf16");
  Cluster cluster(model, GetParam());
  for (size_t i = 0; i < Prompts().size(); ++i) {
    const Generated want = Embedded(model, Prompts()[i], 8);
    const Generated got = cluster.Generate(GreedyRequest("r" + std::to_string(i), Prompts()[i], 8));
    ASSERT_TRUE(got.status.ok()) << got.status.error_message() << "\n" << cluster.log();
    EXPECT_EQ(got.finish_reason, v1::ATTENTION_FINISH_REASON_LENGTH);
    ASSERT_EQ(got.tokens.size(), 8u);
    EXPECT_EQ(got.tokens, want.tokens) << "prompt " << i;
    // Bit-identical: compare the float bits, not within a tolerance.
    EXPECT_EQ(got.logprobs, want.logprobs) << "prompt " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(ExpertWorkers, AttentionWorkerClusterTest, ::testing::Values(1, 3));

TEST(AttentionWorkerCancelTest, CancelledStreamFreesEveryKvBlock) {
  const std::string& model = moe::testing::TestModelDir("tiny", "bf16");
  Cluster cluster(model, 1);
  const v1::WorkerLoad idle = cluster.Load();
  ASSERT_EQ(idle.num_free_kv_blocks(), idle.num_kv_blocks());
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  auto reader = cluster.stub().Generate(&context, GreedyRequest("long", {1, 2, 3}, 400));
  v1::AttentionGenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));
  // GetLoad reports what the step loop published after its last step, which may predate the step
  // that wrote the first token: poll (bounded) until the sequence's blocks show as taken.
  const absl::Time busy_deadline = absl::Now() + absl::Seconds(10);
  v1::WorkerLoad busy = cluster.Load();
  while (busy.num_free_kv_blocks() == idle.num_kv_blocks() && absl::Now() < busy_deadline) {
    busy = cluster.Load();
  }
  EXPECT_LT(busy.num_free_kv_blocks(), idle.num_kv_blocks());
  context.TryCancel();
  while (reader->Read(&response)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  v1::WorkerLoad load = cluster.Load();
  while ((load.num_free_kv_blocks() != load.num_kv_blocks() || load.num_running() != 0) &&
         absl::Now() < deadline) {
    load = cluster.Load();
  }
  EXPECT_EQ(load.num_free_kv_blocks(), idle.num_kv_blocks());
  EXPECT_EQ(load.num_running(), 0);
  EXPECT_EQ(load.num_waiting(), 0);
}

TEST(AttentionWorkerFailureTest, KilledExpertWorkerEndsStreamUnavailableAndRecoversAfterRestart) {
  const std::string& model = moe::testing::TestModelDir("tiny", "bf16");
  Cluster cluster(model, 3);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  auto reader = cluster.stub().Generate(&context, GreedyRequest("doomed", {1, 2, 3}, 4000));
  v1::AttentionGenerateResponse response;
  ASSERT_TRUE(reader->Read(&response)) << reader->Finish().error_message();

  cluster.expert(1).Signal(SIGKILL);
  const absl::Time killed = absl::Now();
  while (reader->Read(&response)) {
  }
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_LT(absl::Now() - killed, absl::Seconds(10));
  EXPECT_TRUE(moe::testing::WaitForHealth(cluster.AttentionAddress(), "readiness", false,
                                          absl::Now() + absl::Seconds(10))
                  .ok());
  EXPECT_FALSE(cluster.Load().ready());

  ASSERT_TRUE(cluster.expert(1).Wait(absl::Seconds(5)).has_value());
  cluster.StartExpert(1);
  absl::Status ready = moe::testing::WaitForHealth(cluster.AttentionAddress(), "readiness", true,
                                                   absl::Now() + absl::Seconds(60));
  ASSERT_TRUE(ready.ok()) << ready << "\n" << cluster.log();
  const Generated after = cluster.Generate(GreedyRequest("after", Prompts()[0], 8));
  ASSERT_TRUE(after.status.ok()) << after.status.error_message() << "\n" << cluster.log();
  EXPECT_EQ(after.tokens, Embedded(model, Prompts()[0], 8).tokens);
}

// A caller cannot reach another caller's sequence by reusing its request_id: the worker keys
// sequences by ids of its own. Both streams run; cancelling one leaves the other whole.
TEST(AttentionWorkerIdentityTest, ACollidingRequestIdNeitherFailsNorCancelsTheOtherStream) {
  const std::string& model = moe::testing::TestModelDir("tiny", "bf16");
  Cluster cluster(model, 1);
  grpc::ClientContext victim_context;
  victim_context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  auto victim = cluster.stub().Generate(&victim_context, GreedyRequest("same-id", Prompts()[0], 48));
  v1::AttentionGenerateResponse response;
  ASSERT_TRUE(victim->Read(&response)) << victim->Finish().error_message();
  std::vector<int32_t> tokens;
  for (const auto& token : response.tokens()) tokens.push_back(token.token_id());

  {
    grpc::ClientContext attacker_context;
    auto attacker = cluster.stub().Generate(&attacker_context, GreedyRequest("same-id", {9, 9, 9}, 400));
    v1::AttentionGenerateResponse first;
    ASSERT_TRUE(attacker->Read(&first)) << attacker->Finish().error_message();
    attacker_context.TryCancel();
    while (attacker->Read(&first)) {
    }
    EXPECT_EQ(attacker->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }

  while (victim->Read(&response)) {
    for (const auto& token : response.tokens()) tokens.push_back(token.token_id());
  }
  const grpc::Status status = victim->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message() << "\n" << cluster.log();
  EXPECT_EQ(tokens, Embedded(model, Prompts()[0], 48).tokens);
}

// The worker checks what it is sent, not only the router: a direct caller's bad values are
// INVALID_ARGUMENT naming the field.
TEST(AttentionWorkerIdentityTest, BadValuesFromADirectCallerAreRefusedNamingTheField) {
  const std::string& model = moe::testing::TestModelDir("tiny", "bf16");
  Cluster cluster(model, 1);
  struct Case {
    std::string name;
    std::function<void(v1::AttentionGenerateRequest&)> spoil;
    std::string field;
  };
  const std::vector<Case> cases = {
      {"nan temperature", [](auto& r) { r.mutable_sampling()->set_temperature(std::nanf("")); },
       "temperature"},
      {"inf temperature", [](auto& r) { r.mutable_sampling()->set_temperature(INFINITY); }, "temperature"},
      {"negative temperature", [](auto& r) { r.mutable_sampling()->set_temperature(-1); }, "temperature"},
      {"top_p 0", [](auto& r) { r.mutable_sampling()->set_top_p(0); }, "top_p"},
      {"repetition_penalty 0", [](auto& r) { r.mutable_sampling()->set_repetition_penalty(0); },
       "repetition_penalty"},
      {"1 MiB request id", [](auto& r) { r.set_request_id(std::string(1 << 20, 'x')); }, "request_id"},
      {"no tokens to make", [](auto& r) { r.set_max_new_tokens(0); }, "max_new_tokens"},
  };
  for (const Case& c : cases) {
    v1::AttentionGenerateRequest request = GreedyRequest("bad", Prompts()[0], 4);
    c.spoil(request);
    const Generated got = cluster.Generate(request);
    EXPECT_EQ(got.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_NE(got.status.error_message().find(c.field), std::string::npos)
        << c.name << ": " << got.status.error_message();
    EXPECT_TRUE(got.tokens.empty()) << c.name;
  }
  // The worker still serves.
  const Generated after = cluster.Generate(GreedyRequest("after", Prompts()[0], 4));
  ASSERT_TRUE(after.status.ok()) << after.status.error_message() << "\n" << cluster.log();
}

}  // namespace
}  // namespace moe::services
