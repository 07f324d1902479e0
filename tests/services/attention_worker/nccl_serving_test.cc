// Serving over the NCCL data plane, in one process: one AttentionWorker and two ExpertWorkers with
// --transport nccl, each with its own FakeNcclApi on one FakeNcclHub (common/transport/nccl/
// fake_nccl_api.h), their gRPC services over mTLS, and requests through the attention worker's
// Generate RPC. Greedy tokens and logprobs must be embedded mode's, bit for bit. The liveness watch
// (ExpertControl/WatchNccl, docs/data-plane.md#watching-the-peers): an expert worker killed during a
// streaming request fails it UNAVAILABLE naming the worker well before the 10 s round deadline; one
// that dies idle makes the attention worker not ready at once, and its restart is taken back (next
// generation) without any request; a hung one is lost within the watch's timeout; expert workers
// abort their side when the attention worker goes. After each rebuild, embedded mode's bits again.
#include <atomic>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/rpc/server.h"
#include "common/rpc/tls.h"
#include "common/rpc/tls_certificates.h"
#include "common/transport/nccl/fake_nccl_api.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "moe/v1/attention.grpc.pb.h"
#include "prometheus/registry.h"
#include "services/attention_worker/attention_service.h"
#include "services/attention_worker/attention_worker.h"
#include "services/expert_worker/expert_control_service.h"
#include "services/expert_worker/expert_worker.h"
#include "tests/util/generation/greedy_generation.h"
#include "tests/util/test_models.h"

namespace moe::services {
namespace {

using moe::testing::Embedded;
using moe::testing::Generated;
using moe::testing::GreedyRequest;
using moe::testing::Prompts;
using ::testing::HasSubstr;
using transport::FakeNcclApi;
using transport::FakeNcclHub;

constexpr int kExperts = 2;
// Generous on a loaded 2-core machine (and under sanitizers): these bound hangs, they time nothing.
constexpr absl::Duration kReady = absl::Seconds(120);
constexpr absl::Duration kRound = absl::Seconds(10);  // --moe_timeout_seconds (its default)
// What the watch must beat: a loss is noticed within 2 s (a reset connection at once, a hung worker
// watch_hold + watch_timeout after the poll it did not answer was sent); the bound has slack for a
// loaded machine and still fails if only the 10 s round deadline noticed it.
constexpr absl::Duration kNoticed = absl::Seconds(5);
// How long a test waits for what the watch should bring about before it fails.
constexpr absl::Duration kGiveUp = absl::Seconds(20);

// The value of the unlabeled counter `name`, NaN if there is none.
double Counter(prometheus::Registry& registry, const std::string& name) {
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    if (family.name == name && !family.metric.empty()) return family.metric[0].counter.value;
  }
  return std::nan("");
}

// ExpertControl in front of the real service that can be frozen: a frozen worker's RPCs get no answer
// until it thaws or the caller gives up (a hung process whose connections stay up). Its data plane
// (the fake NCCL rank) is left alone.
class FreezableExpertControl final : public v1::ExpertControl::Service {
 public:
  explicit FreezableExpertControl(ExpertControlService* inner) : inner_(inner) {}
  void Freeze(bool frozen) { frozen_ = frozen; }

  grpc::Status GetInfo(grpc::ServerContext* c, const v1::GetInfoRequest* q,
                       v1::ExpertWorkerInfo* r) override {
    return Thawed(c, [&] { return inner_->GetInfo(c, q, r); });
  }
  grpc::Status Connect(grpc::ServerContext* c, const v1::ConnectRequest* q, v1::ConnectResponse* r) override {
    return Thawed(c, [&] { return inner_->Connect(c, q, r); });
  }
  grpc::Status Drain(grpc::ServerContext* c, const v1::DrainRequest* q, v1::DrainResponse* r) override {
    return Thawed(c, [&] { return inner_->Drain(c, q, r); });
  }
  grpc::Status LoadExtraExperts(grpc::ServerContext* c, const v1::LoadExtraExpertsRequest* q,
                                v1::LoadExtraExpertsResponse* r) override {
    return Thawed(c, [&] { return inner_->LoadExtraExperts(c, q, r); });
  }
  grpc::Status JoinNccl(grpc::ServerContext* c, const v1::JoinNcclRequest* q,
                        v1::JoinNcclResponse* r) override {
    return Thawed(c, [&] { return inner_->JoinNccl(c, q, r); });
  }
  grpc::Status WatchNccl(grpc::ServerContext* c, const v1::WatchNcclRequest* q,
                         v1::WatchNcclResponse* r) override {
    return Thawed(c, [&] { return inner_->WatchNccl(c, q, r); });
  }

 private:
  grpc::Status Thawed(grpc::ServerContext* context, const std::function<grpc::Status()>& call) {
    while (frozen_ && !context->IsCancelled()) absl::SleepFor(absl::Milliseconds(10));
    if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "gave up while frozen");
    return call();
  }
  ExpertControlService* const inner_;
  std::atomic<bool> frozen_{false};
};

// One expert worker "process": its fake NCCL, the worker, its ExpertControl service and server.
struct Expert {
  std::unique_ptr<FakeNcclApi> api;
  std::unique_ptr<prometheus::Registry> registry;
  std::unique_ptr<ExpertWorker> worker;
  std::unique_ptr<ExpertControlService> service;
  std::unique_ptr<FreezableExpertControl> front;
  std::unique_ptr<rpc::GrpcServer> server;
};

class NcclServingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = moe::testing::TestModelDir("tiny", "bf16");
    auto cluster = rpc::MakeClusterCertificates(moe::testing::MakeTempDir("nccl_serving"), "test CA");
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = *cluster;
    experts_.resize(kExperts);
    for (int e = 0; e < kExperts; ++e) {
      StartExpert(e, "127.0.0.1:0");
      if (HasFatalFailure()) return;
      addresses_.push_back(absl::StrCat("127.0.0.1:", experts_[static_cast<size_t>(e)].server->port()));
    }
    StartAttention();
  }
  void TearDown() override {
    if (attention_server_ != nullptr) attention_server_->Shutdown(absl::ZeroDuration());
    if (attention_ != nullptr) attention_->Stop();
    attention_service_.reset();
    attention_.reset();
    for (int e = 0; e < kExperts; ++e) StopExpert(e);
  }

  std::shared_ptr<grpc::ServerCredentials> ServerCredentials(const std::string& role) {
    const rpc::TlsOptions own = rpc::RoleTlsOptions(cluster_, role);
    auto material = rpc::LoadTlsMaterial(own);
    EXPECT_TRUE(material.ok()) << material.status();
    return rpc::MakeServerCredentials(own, *material);
  }
  rpc::ClientCredentials Credentials(const std::string& role) {
    auto credentials = rpc::MakeClientCredentials(rpc::RoleTlsOptions(cluster_, role));
    EXPECT_TRUE(credentials.ok()) << credentials.status();
    return *credentials;
  }

  // A (re)started expert worker process listening on `listen`.
  void StartExpert(int rank, const std::string& listen) {
    Expert& e = experts_[static_cast<size_t>(rank)];
    e.api = std::make_unique<FakeNcclApi>(&hub_);
    e.registry = std::make_unique<prometheus::Registry>();
    ExpertWorkerOptions options;
    options.model_dir = model_;
    options.rank = rank;
    options.num_expert_workers = kExperts;
    options.data_plane = v1::DATA_PLANE_NCCL;
    options.nccl_api = e.api.get();
    options.nccl_send_timeout = kRound;
    auto worker = ExpertWorker::Create(options, e.registry.get());
    ASSERT_TRUE(worker.ok()) << worker.status();
    e.worker = *std::move(worker);
    e.service = std::make_unique<ExpertControlService>();
    e.service->SetWorker(e.worker.get());
    e.service->SetNcclLinks(e.worker->nccl_links());
    e.front = std::make_unique<FreezableExpertControl>(e.service.get());
    auto server =
        rpc::GrpcServer::Start(listen, {e.front.get()}, 64 << 20, ServerCredentials("expert-worker"));
    ASSERT_TRUE(server.ok()) << server.status();
    e.server = *std::move(server);
  }
  // The process dies: its gRPC server goes, its links stop posting.
  void StopExpert(int rank) {
    Expert& e = experts_[static_cast<size_t>(rank)];
    if (e.server != nullptr) e.server->Shutdown(absl::ZeroDuration());
    if (e.worker != nullptr) e.worker->Stop();
    e.server.reset();
    e.front.reset();
    e.service.reset();
    e.worker.reset();
  }

  void StartAttention() {
    attention_api_ = std::make_unique<FakeNcclApi>(&hub_);
    AttentionWorkerOptions options;
    options.model_dir = model_;
    options.rank = 0;
    options.expert_addresses = addresses_;
    options.engine.num_kv_blocks = 512;
    options.engine.moe_timeout = kRound;
    options.data_plane = v1::DATA_PLANE_NCCL;
    options.nccl_api = attention_api_.get();
    options.connector.credentials = Credentials("attention-worker");
    options.nccl.rpc_timeout = absl::Seconds(10);
    options.nccl.join_timeout = absl::Seconds(20);
    options.nccl.max_backoff = absl::Milliseconds(200);
    options.nccl.watch_lease = watch_lease_;
    auto worker = AttentionWorker::Create(options, &attention_registry_);
    ASSERT_TRUE(worker.ok()) << worker.status();
    attention_ = *std::move(worker);
    attention_->Start({});
    attention_service_ = std::make_unique<AttentionService>();
    attention_service_->SetLoop(attention_->loop());
    auto server = rpc::GrpcServer::Start("127.0.0.1:0", {attention_service_.get()}, 64 << 20,
                                         ServerCredentials("attention-worker"));
    ASSERT_TRUE(server.ok()) << server.status();
    attention_server_ = *std::move(server);
    stub_ = v1::AttentionWorker::NewStub(
        Credentials("router").CreateChannel(absl::StrCat("127.0.0.1:", attention_server_->port())));
  }

  bool WaitReady() {
    const absl::Time deadline = absl::Now() + kReady;
    while (!attention_->ready() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
    return attention_->ready();
  }

  Generated Generate(const std::string& id, const std::vector<int32_t>& prompt, int max_new_tokens) {
    return moe::testing::Generate(*stub_, GreedyRequest(id, prompt, max_new_tokens), absl::Seconds(120));
  }

  void ExpectEmbeddedModesBits(const std::string& id, const std::vector<int32_t>& prompt, int tokens) {
    const Generated want = Embedded(model_, prompt, tokens);
    const Generated got = Generate(id, prompt, tokens);
    ASSERT_TRUE(got.status.ok()) << id << ": " << got.status.error_message();
    EXPECT_EQ(got.tokens, want.tokens) << id;
    EXPECT_EQ(got.logprobs, want.logprobs) << id;
  }

  absl::Duration watch_lease_ = NcclConnectorOptions().watch_lease;
  std::string model_;
  FakeNcclHub hub_;
  rpc::TlsOptions cluster_;
  std::vector<Expert> experts_;
  std::vector<std::string> addresses_;
  std::unique_ptr<FakeNcclApi> attention_api_;
  prometheus::Registry attention_registry_;
  std::unique_ptr<AttentionWorker> attention_;
  std::unique_ptr<AttentionService> attention_service_;
  std::unique_ptr<rpc::GrpcServer> attention_server_;
  std::unique_ptr<v1::AttentionWorker::Stub> stub_;
};

TEST_F(NcclServingTest, GreedyTokensAndLogprobsEqualEmbeddedMode) {
  ASSERT_TRUE(WaitReady());
  ASSERT_NE(attention_->nccl_connector(), nullptr);
  EXPECT_EQ(attention_->nccl_connector()->generation(), 1u);
  for (size_t i = 0; i < Prompts().size(); ++i) {
    ExpectEmbeddedModesBits(absl::StrCat("p", i), Prompts()[i], 8);
  }
  // The rounds were the expert workers' (one per MoE layer and step each), counted in their metrics
  // by the same round handler as over UCX.
  for (int e = 0; e < kExperts; ++e) {
    Expert& expert = experts_[static_cast<size_t>(e)];
    EXPECT_GT(expert.worker->rounds_served(), 0u) << "expert " << e;
    EXPECT_EQ(Counter(*expert.registry, "moe_expert_rounds_total"),
              static_cast<double>(expert.worker->rounds_served()))
        << "expert " << e;
    EXPECT_GT(Counter(*expert.registry, "moe_expert_bytes_sent_total"), 0) << "expert " << e;
  }
  EXPECT_EQ(hub_.aborts(), 0);
}

// An expert worker that is down when a request comes: the request fails UNAVAILABLE (no hang, no
// NCCL watchdog), the worker refuses requests while the communicator cannot be rebuilt, and once the
// expert worker is back (same address, fresh process) rounds flow again with embedded mode's bits.
TEST_F(NcclServingTest, ADeadExpertWorkerFailsTheStepAndARestartServesAgain) {
  ASSERT_TRUE(WaitReady());
  ExpectEmbeddedModesBits("before", Prompts()[0], 4);
  const std::string address = addresses_[1];

  StopExpert(1);
  const absl::Time start = absl::Now();
  const Generated failed = Generate("during", Prompts()[1], 8);
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(failed.status.error_code(), grpc::StatusCode::UNAVAILABLE) << failed.status.error_message();
  EXPECT_LT(took, kNoticed);
  const absl::Time not_ready_by = absl::Now() + kReady;
  while (attention_->ready() && absl::Now() < not_ready_by) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_FALSE(attention_->ready());
  const Generated refused = Generate("refused", Prompts()[1], 8);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.status.error_message();
  EXPECT_THAT(refused.status.error_message(), HasSubstr("expert worker 1"));

  StartExpert(1, address);
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_TRUE(WaitReady());
  EXPECT_GE(attention_->nccl_connector()->generation(), 2u);
  for (size_t i = 0; i < Prompts().size(); ++i) {
    ExpectEmbeddedModesBits(absl::StrCat("after", i), Prompts()[i], 8);
  }
}

// An expert worker killed (its gRPC server and its NCCL rank gone) while a request streams: the
// watch's poll on it fails at once, the communicator is aborted, and the request ends UNAVAILABLE
// naming the worker, long before the 10 s round deadline would have ended it.
TEST_F(NcclServingTest, AnExpertWorkerKilledMidStreamFailsTheRequestWithinTwoSeconds) {
  ASSERT_TRUE(WaitReady());
  const uint64_t generation = attention_->nccl_connector()->generation();
  const std::string address = addresses_[1];

  // Far more tokens than it gets to before the kill.
  const v1::AttentionGenerateRequest request = GreedyRequest("long", Prompts()[0], 1000);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
  auto reader = stub_->Generate(&context, request);
  v1::AttentionGenerateResponse response;
  int tokens = 0;
  while (tokens < 3 && reader->Read(&response)) tokens += response.tokens_size();
  ASSERT_GE(tokens, 3) << "the stream ended early: " << reader->Finish().error_message();

  const absl::Time killed = absl::Now();
  StopExpert(1);
  while (reader->Read(&response)) {
  }
  const grpc::Status status = reader->Finish();
  const absl::Duration took = absl::Now() - killed;
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("expert worker 1"));
  EXPECT_LT(took, kNoticed) << status.error_message();

  StartExpert(1, address);
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_TRUE(WaitReady());
  EXPECT_EQ(attention_->nccl_connector()->generation(), generation + 1);
  ExpectEmbeddedModesBits("after", Prompts()[2], 8);
}

// An idle expert worker dies: the attention worker turns not ready at once (no round had to fail),
// and when the worker restarts the connector rebuilds the next generation by itself: ready again
// before any request was sent, the restarted worker having served no round.
TEST_F(NcclServingTest, AnIdleExpertWorkerThatRestartsIsTakenBackWithoutARequest) {
  ASSERT_TRUE(WaitReady());
  const uint64_t generation = attention_->nccl_connector()->generation();
  const std::string address = addresses_[1];

  const absl::Time killed = absl::Now();
  StopExpert(1);
  while (attention_->ready() && absl::Now() < killed + kGiveUp) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_LT(absl::Now() - killed, kNoticed);
  EXPECT_FALSE(attention_->ready());
  EXPECT_THAT(attention_->nccl_connector()->last_error(), HasSubstr("expert worker 1"));

  StartExpert(1, address);
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_TRUE(WaitReady());
  EXPECT_EQ(attention_->nccl_connector()->generation(), generation + 1);
  EXPECT_EQ(experts_[1].worker->rounds_served(), 0u);
  // The survivor joined the new generation in place.
  EXPECT_EQ(experts_[0].worker->nccl_links()->transport(0)->generation(), generation + 1);
  for (size_t i = 0; i < Prompts().size(); ++i) {
    ExpectEmbeddedModesBits(absl::StrCat("after", i), Prompts()[i], 8);
  }
}

// A hung expert worker (its connections up, no answers): its poll gets no answer, so the attention
// worker loses it within watch_hold + watch_timeout; the hung worker's own side gets no next poll and
// aborts when its lease runs out. Once it answers again the next generation is joined.
TEST_F(NcclServingTest, AHungExpertWorkerIsLostWithinTheWatchTimeout) {
  ASSERT_TRUE(WaitReady());
  const uint64_t generation = attention_->nccl_connector()->generation();
  const NcclExpertLinks* hung_links = experts_[1].worker->nccl_links();
  const absl::Time serving_by = absl::Now() + kReady;
  while (hung_links->serving_generation(0) != generation && absl::Now() < serving_by) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_EQ(hung_links->serving_generation(0), generation);

  experts_[1].front->Freeze(true);
  const absl::Time hung = absl::Now();
  while (attention_->ready() && absl::Now() < hung + kGiveUp) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_LT(absl::Now() - hung, kNoticed);
  EXPECT_THAT(attention_->nccl_connector()->last_error(), HasSubstr("expert worker 1"));
  EXPECT_THAT(attention_->nccl_connector()->last_error(), HasSubstr("hangs"));
  // The hung side: no poll came within the 3 s lease, so it gave up the generation too.
  while (hung_links->serving_generation(0) != 0 && absl::Now() < hung + kGiveUp) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(hung_links->serving_generation(0), 0u);

  experts_[1].front->Freeze(false);
  ASSERT_TRUE(WaitReady());
  EXPECT_GT(attention_->nccl_connector()->generation(), generation);
  ExpectEmbeddedModesBits("after", Prompts()[0], 8);
}

// With a lease far longer than the test, so that only a cancelled poll can end a generation on the
// expert side.
class NcclServingLongLeaseTest : public NcclServingTest {
 protected:
  NcclServingLongLeaseTest() { watch_lease_ = absl::Seconds(60); }
};

// The attention worker goes away: its polls end (a reset connection looks the same to the expert
// workers), and each expert worker aborts its side of the communicator at once instead of keeping
// a receive posted on it (the 60 s lease plays no part).
TEST_F(NcclServingLongLeaseTest, ExpertWorkersAbortTheirSideWhenTheAttentionWorkerGoes) {
  ASSERT_TRUE(WaitReady());
  // Mid-hold (the polls start within 50 ms of readiness and are held 500 ms each): a poll is held
  // on both expert workers when the attention worker goes.
  absl::SleepFor(absl::Milliseconds(1250));
  const uint64_t generation = attention_->nccl_connector()->generation();
  for (int e = 0; e < kExperts; ++e) {
    const NcclExpertLinks* links = experts_[static_cast<size_t>(e)].worker->nccl_links();
    const absl::Time by = absl::Now() + kReady;
    while (links->serving_generation(0) != generation && absl::Now() < by)
      absl::SleepFor(absl::Milliseconds(5));
    ASSERT_EQ(links->serving_generation(0), generation) << "expert " << e;
  }
  const int64_t aborts = hub_.aborts();
  attention_server_->Shutdown(absl::ZeroDuration());
  attention_->Stop();
  const absl::Time gone = absl::Now();
  for (int e = 0; e < kExperts; ++e) {
    const NcclExpertLinks* links = experts_[static_cast<size_t>(e)].worker->nccl_links();
    while (links->serving_generation(0) != 0 && absl::Now() < gone + kGiveUp)
      absl::SleepFor(absl::Milliseconds(5));
    EXPECT_EQ(links->serving_generation(0), 0u) << "expert " << e;
  }
  EXPECT_LT(absl::Now() - gone, kNoticed);
  EXPECT_GE(hub_.aborts(), aborts + kExperts);
}

}  // namespace
}  // namespace moe::services
