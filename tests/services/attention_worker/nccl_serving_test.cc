// Serving over the NCCL data plane, in one process: one AttentionWorker and two ExpertWorkers with
// --transport nccl, each with its own FakeNcclApi on one FakeNcclHub (common/transport/nccl/
// fake_nccl_api.h), their gRPC services over mTLS, and requests through the attention worker's
// Generate RPC. Greedy tokens and logprobs must be embedded mode's, bit for bit; an expert worker
// that dies fails the step with UNAVAILABLE within the round's 2 s deadline, and once it is back
// the communicator is rebuilt and requests are served again.
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/engine/engine.h"
#include "common/rpc/server.h"
#include "common/rpc/tls.h"
#include "common/rpc/tls_certificates.h"
#include "common/transport/nccl/fake_nccl_api.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "moe/v1/attention.grpc.pb.h"
#include "prometheus/registry.h"
#include "services/attention_worker/attention_service.h"
#include "services/attention_worker/attention_worker.h"
#include "services/expert_worker/expert_control_service.h"
#include "services/expert_worker/expert_worker.h"
#include "tests/util/test_models.h"

namespace moe::services {
namespace {

using transport::FakeNcclApi;
using transport::FakeNcclHub;

constexpr int kExperts = 2;
// Generous on a loaded 2-core machine (and under sanitizers): these bound hangs, they time nothing.
constexpr absl::Duration kReady = absl::Seconds(120);
constexpr absl::Duration kRound = absl::Seconds(2);  // --moe_timeout_seconds

struct Generated {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  grpc::Status status;
};

const std::vector<std::vector<int32_t>>& Prompts() {
  static const auto* prompts = new std::vector<std::vector<int32_t>>{
      {1, 2, 3, 4, 5}, {42}, {7, 100, 7, 100, 7, 100, 7, 100, 7, 100, 7, 100, 7, 100, 7, 100, 9}};
  return *prompts;
}

Generated Embedded(const std::string& model, const std::vector<int32_t>& prompt, int max_new_tokens) {
  engine::EngineOptions options;
  options.num_kv_blocks = 512;
  auto engine = engine::Engine::CreateEmbedded(model, options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  engine::GenerationRequest request;
  request.id = "embedded";
  request.prompt = prompt;
  request.sampling.temperature = 0;
  request.max_new_tokens = max_new_tokens;
  request.ignore_eos = true;
  EXPECT_TRUE((*engine)->AddRequest(request).ok());
  Generated out;
  while ((*engine)->HasWork()) {
    for (const engine::TokenEvent& event : (*engine)->Step()) {
      if (event.token_id >= 0) {
        out.tokens.push_back(event.token_id);
        out.logprobs.push_back(event.logprob);
      }
    }
  }
  return out;
}

// The value of the unlabeled counter `name`, NaN if there is none.
double Counter(prometheus::Registry& registry, const std::string& name) {
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    if (family.name == name && !family.metric.empty()) return family.metric[0].counter.value;
  }
  return std::nan("");
}

// One expert worker "process": its fake NCCL, the worker, its ExpertControl service and server.
struct Expert {
  std::unique_ptr<FakeNcclApi> api;
  std::unique_ptr<prometheus::Registry> registry;
  std::unique_ptr<ExpertWorker> worker;
  std::unique_ptr<ExpertControlService> service;
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
    auto server =
        rpc::GrpcServer::Start(listen, {e.service.get()}, 64 << 20, ServerCredentials("expert-worker"));
    ASSERT_TRUE(server.ok()) << server.status();
    e.server = *std::move(server);
  }
  // The process dies: its gRPC server goes, its links stop posting.
  void StopExpert(int rank) {
    Expert& e = experts_[static_cast<size_t>(rank)];
    if (e.server != nullptr) e.server->Shutdown(absl::ZeroDuration());
    if (e.worker != nullptr) e.worker->Stop();
    e.server.reset();
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
    v1::AttentionGenerateRequest request;
    request.set_request_id(id);
    for (int32_t t : prompt) request.add_prompt(t);
    v1::AttentionSampling* sampling = request.mutable_sampling();
    sampling->set_temperature(0);
    sampling->set_top_p(1);
    sampling->set_top_k(0);
    sampling->set_repetition_penalty(1);
    request.set_max_new_tokens(max_new_tokens);
    request.set_ignore_eos(true);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
    auto reader = stub_->Generate(&context, request);
    Generated out;
    v1::AttentionGenerateResponse response;
    while (reader->Read(&response)) {
      for (const auto& token : response.tokens()) {
        out.tokens.push_back(token.token_id());
        out.logprobs.push_back(token.logprob());
      }
    }
    out.status = reader->Finish();
    return out;
  }

  void ExpectEmbeddedModesBits(const std::string& id, const std::vector<int32_t>& prompt, int tokens) {
    const Generated want = Embedded(model_, prompt, tokens);
    const Generated got = Generate(id, prompt, tokens);
    ASSERT_TRUE(got.status.ok()) << id << ": " << got.status.error_message();
    EXPECT_EQ(got.tokens, want.tokens) << id;
    EXPECT_EQ(got.logprobs, want.logprobs) << id;
  }

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

// An expert worker dies: the step fails UNAVAILABLE by the round's deadline (no hang, no NCCL
// watchdog), the worker refuses requests while the communicator cannot be rebuilt, and once the
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
  // The bound is the 2 s round deadline; the slack is for a loaded machine, not a measurement.
  EXPECT_LT(took, kRound + absl::Seconds(8));
  // While it is down the communicator cannot be rebuilt (the step loop's failure report comes just
  // after the stream's end): new requests are refused at once.
  const absl::Time not_ready_by = absl::Now() + kReady;
  while (attention_->ready() && absl::Now() < not_ready_by) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_FALSE(attention_->ready());
  const Generated refused = Generate("refused", Prompts()[1], 8);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.status.error_message();

  StartExpert(1, address);
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_TRUE(WaitReady());
  EXPECT_GE(attention_->nccl_connector()->generation(), 2u);
  for (size_t i = 0; i < Prompts().size(); ++i) {
    ExpectEmbeddedModesBits(absl::StrCat("after", i), Prompts()[i], 8);
  }
}

}  // namespace
}  // namespace moe::services
