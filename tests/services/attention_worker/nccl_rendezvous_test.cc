// The NCCL rendezvous end to end in one process, over the fake NCCL (common/transport/nccl/
// fake_nccl_api.h) and real gRPC with mTLS: two expert workers' ExpertControlService (JoinNccl) over
// NcclExpertLinks, and an attention worker's NcclConnector + NcclTransport. Rounds go through the
// ActivationTransport seam as MoeDispatcher sends them (Send a dispatch to every expert worker, then
// ReceiveTagged each answer); the experts answer with a function of the dispatch.
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/rpc/server.h"
#include "common/rpc/tls.h"
#include "common/rpc/tls_certificates.h"
#include "common/transport/nccl/fake_nccl_api.h"
#include "common/transport/nccl/nccl_bootstrap.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "services/attention_worker/nccl_connector.h"
#include "services/expert_worker/expert_control_service.h"
#include "services/expert_worker/nccl_links.h"
#include "tests/util/test_models.h"

namespace moe::services {
namespace {

using ::testing::HasSubstr;
using transport::FakeNcclApi;
using transport::FakeNcclHub;
using transport::Message;
using transport::MessageKind;
using transport::MessageTag;

constexpr int kExperts = 2;
constexpr int32_t kAttentionPeer = 3;
// Generous on a loaded 2-core machine (and under sanitizers): these bound hangs, they time nothing.
constexpr absl::Duration kReady = absl::Seconds(60);

// What expert worker `peer` answers to a dispatch: its payload reversed, then the peer's low byte.
std::vector<std::byte> Answer(int32_t peer, const std::vector<std::byte>& dispatch) {
  std::vector<std::byte> out(dispatch.rbegin(), dispatch.rend());
  out.push_back(static_cast<std::byte>(peer & 0xff));
  return out;
}

std::vector<std::byte> DispatchPayload(int expert, uint64_t step) {
  std::vector<std::byte> out(100 + 10 * static_cast<size_t>(expert));
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<std::byte>((i * 13 + step + expert) & 0xff);
  return out;
}

// One expert worker process: its fake NCCL, its links and its gRPC service.
struct Expert {
  int rank = 0;
  std::unique_ptr<FakeNcclApi> api;
  std::unique_ptr<NcclExpertLinks> links;
};

class NcclRendezvousTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto cluster = rpc::MakeClusterCertificates(moe::testing::MakeTempDir("nccl_rendezvous"), "test CA");
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = *cluster;
    const rpc::TlsOptions own = rpc::RoleTlsOptions(cluster_, "expert-worker");
    auto material = rpc::LoadTlsMaterial(own);
    ASSERT_TRUE(material.ok()) << material.status();
    for (int e = 0; e < kExperts; ++e) {
      services_.push_back(std::make_unique<ExpertControlService>());
      auto server = rpc::GrpcServer::Start("127.0.0.1:0", {services_.back().get()}, 64 << 20,
                                           rpc::MakeServerCredentials(own, *material));
      ASSERT_TRUE(server.ok()) << server.status();
      addresses_.push_back(absl::StrCat("127.0.0.1:", (*server)->port()));
      servers_.push_back(*std::move(server));
      experts_.push_back(StartExpert(e));
    }
  }
  void TearDown() override {
    connector_.reset();
    for (Expert& e : experts_) e.links->Stop();
    for (auto& s : servers_) s->Shutdown(absl::ZeroDuration());
  }

  // A (re)started expert worker process: fresh links, registered with its service.
  Expert StartExpert(int rank) {
    Expert e;
    e.rank = rank;
    e.api = std::make_unique<FakeNcclApi>(&hub_);
    NcclLinksOptions options;
    options.self_peer = 1000 + rank;
    options.model_fingerprint = "fp";
    options.max_round_tokens = 64;
    options.message_bound = [](int64_t tokens) { return static_cast<size_t>(tokens) * 1024; };
    options.send_timeout = absl::Seconds(2);
    const int32_t self = options.self_peer;
    e.links = std::make_unique<NcclExpertLinks>(options, e.api.get(), [self](const Message& m) {
      return NcclAnswer{Answer(self, m.payload), {}};
    });
    services_[static_cast<size_t>(rank)]->SetNcclLinks(e.links.get());
    return e;
  }

  // A (re)started attention worker process.
  void StartAttention() {
    connector_.reset();
    attention_.reset();  // before its api
    attention_api_ = std::make_unique<FakeNcclApi>(&hub_);
    transport::NcclTransportOptions topts;
    topts.send_timeout = absl::Seconds(2);  // a dead peer is UNAVAILABLE within 2 s
    attention_ = std::make_unique<transport::NcclTransport>(kAttentionPeer, attention_api_.get(), topts);
    NcclConnectorOptions options;
    options.expert_addresses = addresses_;
    options.attention_rank = kAttentionPeer;
    options.model_fingerprint = "fp";
    options.max_round_tokens = 32;
    options.rpc_timeout = absl::Seconds(10);
    options.join_timeout = absl::Seconds(20);
    options.credentials = Credentials("attention-worker");
    connector_ = std::make_unique<NcclConnector>(options, attention_api_.get(), attention_.get());
    connector_->Start();
  }

  rpc::ClientCredentials Credentials(const std::string& role) {
    auto credentials = rpc::MakeClientCredentials(rpc::RoleTlsOptions(cluster_, role));
    EXPECT_TRUE(credentials.ok()) << credentials.status();
    return *credentials;
  }

  // Waits until every expert worker's link serves `generation` (it finishes its join a moment after
  // the attention worker's).
  void WaitExpertsServe(uint64_t generation) {
    const absl::Time deadline = absl::Now() + kReady;
    for (const Expert& e : experts_) {
      while (e.links->serving_generation(kAttentionPeer) != generation && absl::Now() < deadline) {
        absl::SleepFor(absl::Milliseconds(5));
      }
      EXPECT_EQ(e.links->serving_generation(kAttentionPeer), generation) << "expert " << e.rank;
    }
  }

  // One MoE round as MoeDispatcher runs it: a dispatch to every expert worker, then every answer.
  absl::Status Round(uint64_t step, uint32_t layer) {
    for (int e = 0; e < kExperts; ++e) {
      const MessageTag tag{MessageKind::kDispatch, step, layer, 0, kAttentionPeer};
      if (absl::Status s = attention_->Send(1000 + e, tag, DispatchPayload(e, step)); !s.ok()) return s;
    }
    const absl::Time deadline = absl::Now() + absl::Seconds(2);
    for (int e = 0; e < kExperts; ++e) {
      const MessageTag tag{MessageKind::kCombine, step, layer, 0, 1000 + e};
      absl::StatusOr<Message> answer = attention_->ReceiveTagged(tag, deadline);
      if (!answer.ok()) return answer.status();
      EXPECT_EQ(answer->tag, tag);
      EXPECT_EQ(answer->payload, Answer(1000 + e, DispatchPayload(e, step))) << "expert " << e;
    }
    return absl::OkStatus();
  }

  FakeNcclHub hub_;
  rpc::TlsOptions cluster_;
  std::vector<std::unique_ptr<ExpertControlService>> services_;
  std::vector<std::unique_ptr<rpc::GrpcServer>> servers_;
  std::vector<std::string> addresses_;
  std::vector<Expert> experts_;
  std::unique_ptr<FakeNcclApi> attention_api_;
  std::unique_ptr<transport::NcclTransport> attention_;
  std::unique_ptr<NcclConnector> connector_;
};

TEST_F(NcclRendezvousTest, TheBootstrapTravelsOverJoinNcclAndRoundsFlow) {
  StartAttention();
  ASSERT_TRUE(connector_->WaitReady(absl::Now() + kReady));
  EXPECT_EQ(connector_->generation(), 1u);
  WaitExpertsServe(1);
  for (uint64_t step = 1; step <= 3; ++step) {
    for (uint32_t layer = 0; layer < 2; ++layer) ASSERT_TRUE(Round(step, layer).ok()) << step << "/" << layer;
  }
  // An expert counts a round once its answer's Send has returned, which may be after the answer
  // arrived here: wait for the count rather than read it at once.
  auto served = [this] { return experts_[0].links->rounds_served() + experts_[1].links->rounds_served(); };
  for (const absl::Time deadline = absl::Now() + kReady; served() < 12u && absl::Now() < deadline;)
    absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(served(), 12u);
  EXPECT_EQ(hub_.aborts(), 0);
}

// An expert worker dies: the round fails UNAVAILABLE within the 2 s deadline, the rendezvous cannot
// complete while it is down, and once it is back the survivor rebuilds in place (same transport,
// next generation) and rounds flow again.
TEST_F(NcclRendezvousTest, ADeadExpertIsUnavailableAndARestartRebuildsTheSurvivorsInPlace) {
  StartAttention();
  ASSERT_TRUE(connector_->WaitReady(absl::Now() + kReady));
  WaitExpertsServe(1);
  ASSERT_TRUE(Round(1, 0).ok());
  const transport::NcclTransport* survivor = experts_[0].links->transport(kAttentionPeer);
  ASSERT_NE(survivor, nullptr);

  experts_[1].links->Stop();  // the process dies: its communicator is aborted, nothing more posted
  const absl::Time start = absl::Now();
  const absl::Status failed = Round(2, 0);
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(failed.code(), absl::StatusCode::kUnavailable) << failed;
  EXPECT_THAT(failed.message(), HasSubstr("1001"));
  // The bound is the 2 s send timeout; the slack is for a loaded machine, not a measurement.
  EXPECT_LT(took, absl::Seconds(2) + absl::Seconds(8));
  connector_->ReportFailure();
  EXPECT_FALSE(connector_->ready());
  // While expert 1 is down (its JoinNccl answers UNAVAILABLE) the connector stays not ready.
  EXPECT_FALSE(connector_->WaitReady(absl::Now() + absl::Milliseconds(300)));

  experts_[1] = StartExpert(1);  // the restarted process
  ASSERT_TRUE(connector_->WaitReady(absl::Now() + kReady));
  const uint64_t generation = connector_->generation();
  EXPECT_GE(generation, 2u);
  WaitExpertsServe(generation);
  EXPECT_EQ(experts_[0].links->transport(kAttentionPeer), survivor) << "the survivor kept its transport";
  EXPECT_EQ(survivor->generation(), generation);
  EXPECT_EQ(attention_->generation(), generation);
  for (uint64_t step = 3; step <= 4; ++step) ASSERT_TRUE(Round(step, 0).ok()) << step;
}

// A restarted attention worker (a new attention_instance) starts its generations over; the expert
// workers give its link a fresh transport.
TEST_F(NcclRendezvousTest, ARestartedAttentionWorkerStartsOver) {
  StartAttention();
  ASSERT_TRUE(connector_->WaitReady(absl::Now() + kReady));
  WaitExpertsServe(1);
  ASSERT_TRUE(Round(1, 0).ok());
  const uint64_t first_instance = connector_->instance();
  StartAttention();
  EXPECT_NE(connector_->instance(), first_instance);
  ASSERT_TRUE(connector_->WaitReady(absl::Now() + kReady));
  EXPECT_EQ(connector_->generation(), 1u);
  WaitExpertsServe(1);
  ASSERT_TRUE(Round(1, 0).ok());
}

TEST_F(NcclRendezvousTest, JoinNcclRefusesBadRequestsNamingTheField) {
  auto stub_as = [&](const std::string& role) {
    return v1::ExpertControl::NewStub(Credentials(role).CreateChannel(addresses_[0]));
  };
  transport::NcclBootstrap bootstrap;
  bootstrap.generation = 1;
  bootstrap.peers = {kAttentionPeer, 1000, 1001};
  FakeNcclApi api(&hub_);
  ASSERT_EQ(api.GetUniqueId(&bootstrap.unique_id), transport::NcclResult::kSuccess);
  v1::JoinNcclRequest good;
  good.set_peer_id(kAttentionPeer);
  good.set_model_fingerprint("fp");
  good.set_nccl_bootstrap(transport::EncodeNcclBootstrap(bootstrap));
  good.set_attention_instance(42);
  good.set_max_round_tokens(32);
  auto call = [&](const std::string& role, const v1::JoinNcclRequest& request) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    v1::JoinNcclResponse response;
    return stub_as(role)->JoinNccl(&context, request, &response);
  };
  // Only an attention worker's certificate may hand over a bootstrap.
  for (const std::string role : {"operator", "router", "expert-worker"}) {
    const grpc::Status s = call(role, good);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << role << ": " << s.error_message();
  }
  auto expect_refused = [&](v1::JoinNcclRequest request, grpc::StatusCode code, const std::string& text) {
    const grpc::Status s = call("attention-worker", request);
    EXPECT_EQ(s.error_code(), code) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(text));
  };
  v1::JoinNcclRequest r = good;
  r.set_nccl_bootstrap("garbage");
  expect_refused(r, grpc::StatusCode::INVALID_ARGUMENT, "nccl_bootstrap");
  r = good;
  r.set_peer_id(1000);
  expect_refused(r, grpc::StatusCode::INVALID_ARGUMENT, "peer_id");
  r = good;
  r.set_peer_id(4);
  expect_refused(r, grpc::StatusCode::INVALID_ARGUMENT, "rank 0 is peer 3");
  r = good;
  r.set_model_fingerprint("another model");
  expect_refused(r, grpc::StatusCode::FAILED_PRECONDITION, "model_fingerprint");
  r = good;
  r.set_max_round_tokens(65);
  expect_refused(r, grpc::StatusCode::INVALID_ARGUMENT, "max_round_tokens");
  r = good;
  r.set_attention_instance(0);
  expect_refused(r, grpc::StatusCode::INVALID_ARGUMENT, "attention_instance");
  r = good;
  r.set_watch_lease_ms(600001);
  expect_refused(r, grpc::StatusCode::INVALID_ARGUMENT, "watch_lease_ms");
  transport::NcclBootstrap elsewhere = bootstrap;
  elsewhere.peers = {kAttentionPeer, 1001};
  r = good;
  r.set_nccl_bootstrap(transport::EncodeNcclBootstrap(elsewhere));
  expect_refused(r, grpc::StatusCode::INVALID_ARGUMENT, "does not list this worker's peer id 1000");
  // Accepted once; the same generation again from the same process is stale.
  EXPECT_TRUE(call("attention-worker", good).ok());
  expect_refused(good, grpc::StatusCode::FAILED_PRECONDITION, "stale");
  // A worker without the NCCL data plane says so.
  services_[1]->SetNcclLinks(nullptr);
  grpc::ClientContext context;
  v1::JoinNcclResponse response;
  const grpc::Status s =
      v1::ExpertControl::NewStub(Credentials("attention-worker").CreateChannel(addresses_[1]))
          ->JoinNccl(&context, good, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("not NCCL"));
}

// WatchNccl, the liveness watch's long poll: only for attention workers, fields checked, and an
// attention process this worker has no link from is answered at once (generation 0, not usable), so
// a restarted expert worker is told apart from a live one by the first poll it gets.
TEST_F(NcclRendezvousTest, WatchNcclRefusesBadRequestsAndAnswersAnUnknownCallerAtOnce) {
  v1::WatchNcclRequest good;
  good.set_peer_id(kAttentionPeer);
  good.set_attention_instance(42);
  good.set_generation(1);
  good.set_hold_ms(60000);
  good.set_lease_ms(1000);
  auto call = [&](const std::string& role, const v1::WatchNcclRequest& request,
                  v1::WatchNcclResponse* response, size_t expert = 0) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    return v1::ExpertControl::NewStub(Credentials(role).CreateChannel(addresses_[expert]))
        ->WatchNccl(&context, request, response);
  };
  v1::WatchNcclResponse response;
  for (const std::string role : {"operator", "router", "expert-worker"}) {
    const grpc::Status s = call(role, good, &response);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << role << ": " << s.error_message();
  }
  auto expect_refused = [&](v1::WatchNcclRequest request, const std::string& field) {
    const grpc::Status s = call("attention-worker", request, &response);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << field << ": " << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(field));
  };
  v1::WatchNcclRequest r = good;
  r.set_peer_id(1000);
  expect_refused(r, "peer_id");
  r = good;
  r.set_attention_instance(0);
  expect_refused(r, "attention_instance");
  r = good;
  r.set_generation(0);
  expect_refused(r, "generation");
  r = good;
  r.set_hold_ms(0);
  expect_refused(r, "hold_ms");
  r = good;
  r.set_hold_ms(60001);
  expect_refused(r, "hold_ms");
  r = good;
  r.set_lease_ms(0);
  expect_refused(r, "lease_ms");

  // No link from that process: answered at once, not after the 60 s hold.
  const absl::Time start = absl::Now();
  const grpc::Status s = call("attention-worker", good, &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
  EXPECT_EQ(response.generation(), 0u);
  EXPECT_FALSE(response.usable());
  EXPECT_EQ(response.peer_id(), 1000);

  services_[1]->SetNcclLinks(nullptr);
  const grpc::Status not_nccl = call("attention-worker", good, &response, 1);
  EXPECT_EQ(not_nccl.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << not_nccl.error_message();
  EXPECT_THAT(not_nccl.error_message(), HasSubstr("not NCCL"));
}

// While the attention worker is ready each expert worker holds its poll: the poll of the joined
// generation is answered usable after the hold, and an idle, healthy communicator is never given up
// by the watch (over several leases).
TEST_F(NcclRendezvousTest, TheWatchKeepsAHealthyIdleCommunicator) {
  StartAttention();
  ASSERT_TRUE(connector_->WaitReady(absl::Now() + kReady));
  WaitExpertsServe(1);
  absl::SleepFor(absl::Seconds(4));  // the default lease is 3 s, the hold 0.5 s
  EXPECT_TRUE(connector_->ready());
  EXPECT_EQ(connector_->generation(), 1u);
  WaitExpertsServe(1);
  ASSERT_TRUE(Round(1, 0).ok());
  EXPECT_EQ(hub_.aborts(), 0);
}

}  // namespace
}  // namespace moe::services
