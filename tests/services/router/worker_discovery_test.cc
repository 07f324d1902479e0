// Elastic attention workers: the pool's SetAttentionWorkers (add, remove, add again, bad input) against
// in-process fake workers behind the real GenerateService, and WorkerDiscovery's file and DNS sources.
#include "services/router/worker_discovery.h"

#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "common/rpc/server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/router/attention_worker_pool.h"
#include "services/router/generate_service.h"
#include "tests/services/router/fake_attention_worker.h"
#include "tests/util/test_models.h"

namespace moe::router {
namespace {

using fakes::FakeWorker;
using fakes::kNormal;
using fakes::WaitFor;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(ParseWorkersFileTest, TakesEntriesSeparatedByCommasSpacesAndLinesAndSkipsComments) {
  auto parsed = ParseWorkersFile("# workers\n127.0.0.1:1, host-a:2\n\n  [::1]:3 # local\r\n", "f");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_THAT(*parsed, ElementsAre("127.0.0.1:1", "host-a:2", "[::1]:3"));
  auto empty = ParseWorkersFile("# nothing yet\n", "f");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

TEST(ParseWorkersFileTest, NamesTheFileAndLineOfABadEntry) {
  for (const char* bad : {"127.0.0.1", "127.0.0.1:0", "h:99999", ":5", "h:x"}) {
    auto parsed = ParseWorkersFile(absl::StrCat("127.0.0.1:1\n", bad, "\n"), "/tmp/w");
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(parsed.status().message(), HasSubstr("--attention_workers_file /tmp/w line 2"));
    EXPECT_THAT(parsed.status().message(), HasSubstr(bad));
  }
}

TEST(ResolveWorkersTest, ResolvesToAddressesWithThePortAndRejectsBadTargets) {
  auto numeric = ResolveWorkers("127.0.0.1:50052");
  ASSERT_TRUE(numeric.ok()) << numeric.status();
  EXPECT_THAT(*numeric, ElementsAre("127.0.0.1:50052"));
  EXPECT_THAT(ValidateDnsTarget("attention").message(), HasSubstr("--attention_workers_dns: 'attention'"));
  EXPECT_FALSE(ValidateDnsTarget("attention:0").ok());
  EXPECT_TRUE(ValidateDnsTarget("moe-attention.ns.svc.cluster.local:50051").ok());
  auto missing = ResolveWorkers("no-such-host.invalid:1");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(missing.status().message(), HasSubstr("no-such-host.invalid"));
}

// Two fake workers; the pool starts with A only.
class ElasticPoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = *ServedModel::Load(testing::TestModelDir("tiny", "bf16"), "tiny");
    for (FakeWorker* w : {&a_, &b_}) w->script = *model_->tokenizer->Encode("Hello world");
    a_server_ = *rpc::GrpcServer::Start("127.0.0.1:0", {&a_});
    b_server_ = *rpc::GrpcServer::Start("127.0.0.1:0", {&b_});
    a_address_ = "127.0.0.1:" + std::to_string(a_server_->port());
    b_address_ = "127.0.0.1:" + std::to_string(b_server_->port());
    metrics_ = std::make_unique<RouterMetrics>(registry_);
    AttentionWorkerPoolOptions options;
    options.poll_interval = absl::Milliseconds(20);
    pool_ = std::make_unique<AttentionWorkerPool>(std::vector<std::string>{a_address_},
                                                  std::vector<std::string>{}, options, metrics_.get());
    service_ = std::make_unique<GenerateService>(model_.get(), pool_.get(), metrics_.get());
    router_ = *rpc::GrpcServer::Start("127.0.0.1:0", {service_.get()});
    // The pool calls this on every poll for as long as it runs: it may only touch members.
    pool_->Start([this](bool r) {
      if (r && !ready_.HasBeenNotified()) ready_.Notify();
    });
    ASSERT_TRUE(ready_.WaitForNotificationWithTimeout(absl::Seconds(10)));
    stub_ = moe::v1::Generation::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(router_->port()),
                                                             grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    router_->Shutdown(absl::Seconds(1));
    pool_->Stop();
    a_server_->Shutdown(absl::Seconds(1));
    b_server_->Shutdown(absl::Seconds(1));
  }

  grpc::Status Generate() {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    moe::v1::GenerateRequest request;
    request.mutable_token_ids()->add_ids(kNormal);
    request.mutable_sampling()->set_max_new_tokens(8);
    auto reader = stub_->Generate(&context, request);
    moe::v1::GenerateResponse m;
    while (reader->Read(&m)) {
    }
    return reader->Finish();
  }
  static size_t Received(FakeWorker& w) {
    absl::MutexLock lock(&w.ids_mu);
    return w.request_ids.size();
  }
  // Waits until a full poll round has been answered after now by `w` (its view is current).
  static bool Polled(FakeWorker& w) {
    const int seen = w.loads_served.load();
    return WaitFor([&] { return w.loads_served.load() >= seen + 2; });
  }

  std::unique_ptr<ServedModel> model_;
  FakeWorker a_, b_;
  std::unique_ptr<rpc::GrpcServer> a_server_, b_server_;
  std::string a_address_, b_address_;
  prometheus::Registry registry_;
  std::unique_ptr<RouterMetrics> metrics_;
  absl::Notification ready_;  // declared before pool_: outlives its polling thread
  std::unique_ptr<AttentionWorkerPool> pool_;
  std::unique_ptr<GenerateService> service_;
  std::unique_ptr<rpc::GrpcServer> router_;
  std::unique_ptr<moe::v1::Generation::Stub> stub_;
};

TEST_F(ElasticPoolTest, AddedWorkerGetsRequestsOnceReadyAndRemovedOneNoMore) {
  a_.free_blocks = 100;  // B, once there, has more room: placement prefers it
  ASSERT_TRUE(pool_->SetAttentionWorkers({a_address_, b_address_, a_address_}, "test").ok());
  EXPECT_EQ(pool_->num_workers(), 2u);
  EXPECT_THAT(pool_->attention_workers(), ElementsAre(a_address_, b_address_));
  ASSERT_TRUE(Polled(b_));
  ASSERT_TRUE(Generate().ok());
  EXPECT_EQ(Received(b_), 1u);
  EXPECT_EQ(Received(a_), 0u);

  // Remove B: A gets everything although B has more room, and B is no longer polled.
  ASSERT_TRUE(pool_->SetAttentionWorkers({a_address_}, "test").ok());
  EXPECT_EQ(pool_->num_workers(), 1u);
  ASSERT_TRUE(Polled(a_));
  const int b_polls = b_.loads_served.load();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Generate().ok());
  EXPECT_EQ(Received(a_), 3u);
  EXPECT_EQ(Received(b_), 1u);
  ASSERT_TRUE(Polled(a_));
  EXPECT_LE(b_.loads_served.load(), b_polls + 1);  // at most the poll already in flight

  // B again (same address, e.g. a restarted pod): requests go to it once a new poll says ready.
  ASSERT_TRUE(pool_->SetAttentionWorkers({b_address_, a_address_}, "test").ok());
  EXPECT_EQ(pool_->num_workers(), 2u);
  ASSERT_TRUE(Polled(b_));
  ASSERT_TRUE(Generate().ok());
  EXPECT_EQ(Received(b_), 2u);
}

TEST_F(ElasticPoolTest, RemovingEveryWorkerTurnsTheRouterNotReadyAndRefusesRequests) {
  ASSERT_TRUE(pool_->SetAttentionWorkers({}, "test").ok());
  EXPECT_EQ(pool_->num_workers(), 0u);
  EXPECT_TRUE(WaitFor([&] { return !pool_->ready(); }));
  const grpc::Status refused = Generate();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE);
  ASSERT_TRUE(pool_->SetAttentionWorkers({a_address_}, "test").ok());
  EXPECT_TRUE(WaitFor([&] { return pool_->ready(); }));
  EXPECT_TRUE(Generate().ok());
}

TEST_F(ElasticPoolTest, BadAddressIsRefusedNamingTheSourceAndLeavesTheSetAlone) {
  const absl::Status bad = pool_->SetAttentionWorkers({b_address_, "no-port"}, "attention_workers_file /w");
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.message(), HasSubstr("--attention_workers_file /w: 'no-port'"));
  EXPECT_THAT(pool_->attention_workers(), ElementsAre(a_address_));
}

TEST_F(ElasticPoolTest, FileDiscoveryAppliesTheFileAndKeepsTheSetWhenItTurnsBad) {
  const std::string path = testing::MakeTempDir("discovery") + "/attention_workers";
  auto write = [&](const std::string& contents) { std::ofstream(path, std::ios::trunc) << contents; };
  write(a_address_ + "\n" + b_address_ + "\n");
  auto discovery = WorkerDiscovery::FromFile(path, absl::Milliseconds(20), pool_.get());
  ASSERT_TRUE(discovery->Refresh().ok());
  EXPECT_THAT(pool_->attention_workers(), ElementsAre(a_address_, b_address_));

  write(b_address_ + "\nnot an address\n");
  const absl::Status bad = discovery->Refresh();
  EXPECT_THAT(bad.message(), HasSubstr("line 2"));
  EXPECT_THAT(pool_->attention_workers(), ElementsAre(a_address_, b_address_));

  // The thread picks up the next good version.
  discovery->Start();
  write(b_address_ + "\n");
  EXPECT_TRUE(WaitFor([&] { return pool_->num_workers() == 1; }));
  EXPECT_THAT(pool_->attention_workers(), ElementsAre(b_address_));
  discovery->Stop();

  std::remove(path.c_str());
  EXPECT_EQ(discovery->Refresh().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(pool_->attention_workers(), ElementsAre(b_address_));
}

TEST_F(ElasticPoolTest, DnsDiscoveryAddsEveryAddressTheNameResolvesTo) {
  const std::string port = b_address_.substr(b_address_.rfind(':') + 1);
  auto discovery = WorkerDiscovery::FromDns("localhost:" + port, absl::Milliseconds(20), pool_.get());
  ASSERT_TRUE(discovery->Refresh().ok());
  // localhost is 127.0.0.1 (and may be ::1 too, where nothing listens: that one never turns ready).
  EXPECT_THAT(pool_->attention_workers(), ::testing::Contains(b_address_));
  EXPECT_THAT(pool_->attention_workers(), ::testing::Not(::testing::Contains(a_address_)));
  ASSERT_TRUE(Polled(b_));
  ASSERT_TRUE(Generate().ok());
  EXPECT_EQ(Received(b_), 1u);
  // A name that stops resolving keeps the set.
  auto gone = WorkerDiscovery::FromDns("no-such-host.invalid:" + port, absl::Milliseconds(20), pool_.get());
  EXPECT_EQ(gone->Refresh().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(pool_->attention_workers(), ::testing::Contains(b_address_));
}

}  // namespace
}  // namespace moe::router
