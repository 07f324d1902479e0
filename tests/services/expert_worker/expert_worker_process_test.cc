// Integration: a real moe-expert-worker process: shard map over gRPC, Connect validation, and a
// clean exit on SIGTERM.
#include <sys/wait.h>

#include <csignal>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "common/model/config.h"
#include "common/model/model_fingerprint.h"
#include "common/rpc/tls.h"
#include "common/rpc/tls_certificates.h"
#include "common/transport/moe_message.h"
#include "common/transport/ucx/ucx_transport.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "moe/v1/expert_control.grpc.pb.h"
#include "tests/services/process_helper.h"
#include "tests/util/test_models.h"

namespace moe::services {
namespace {

TEST(ExpertWorkerProcessTest, RefusesAPollSpinOutOfRangeNamingTheFlag) {
  for (const char* spin : {"-1", "10001", "fast"}) {
    auto child =
        moe::testing::ChildProcess::Start(moe::testing::BinaryPath("moe-expert-worker"),
                                          {"--model", moe::testing::TestModelDir("tiny", "bf16"), "--listen",
                                           moe::testing::LocalAddress(moe::testing::FreePort()),
                                           "--metrics_port", "0", "--insecure", "--ucx_poll_spin_us", spin},
                                          ::testing::TempDir() + "expert_worker_poll_spin_" + spin + ".log");
    ASSERT_TRUE(child.ok());
    const std::optional<int> status = (*child)->Wait(absl::Seconds(30));
    ASSERT_TRUE(status.has_value()) << "still running";
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) != 0);
    EXPECT_NE((*child)->Log().find("--ucx_poll_spin_us must be auto or an integer in [0, 10000]"),
              std::string::npos)
        << (*child)->Log();
  }
}

TEST(ExpertWorkerProcessTest, ServesItsShardOfAnUnevenSplitAndExitsZeroOnSigterm) {
  const std::string& model = moe::testing::TestModelDir("tiny", "bf16");
  const int port = moe::testing::FreePort();
  const std::string address = moe::testing::LocalAddress(port);
  auto child =
      moe::testing::ChildProcess::Start(moe::testing::BinaryPath("moe-expert-worker"),
                                        {"--model", model, "--rank", "2", "--num_expert_workers", "3",
                                         "--listen", address, "--metrics_port", "0", "--insecure"});
  ASSERT_TRUE(child.ok());
  ASSERT_TRUE(moe::testing::WaitForHealth(address, "readiness", true, absl::Now() + absl::Seconds(60)).ok());
  EXPECT_TRUE(moe::testing::IsServing(address, "startup"));

  auto stub = v1::ExpertControl::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  v1::ExpertWorkerInfo info;
  ASSERT_TRUE(stub->GetInfo(&context, v1::GetInfoRequest(), &info).ok());
  EXPECT_EQ(info.rank(), 2);
  EXPECT_EQ(info.num_expert_workers(), 3);
  EXPECT_EQ(info.peer_id(), 1002);
  EXPECT_EQ(info.data_plane(), v1::DATA_PLANE_UCX);
  EXPECT_FALSE(info.address().empty());
  EXPECT_EQ(info.model_fingerprint(), *model::ModelFingerprint(model));
  // tiny has the real 128 experts: 43 + 43 + 42.
  EXPECT_EQ(info.first_expert(), 86);
  EXPECT_EQ(info.num_experts(), 42);

  grpc::ClientContext bad_context;
  v1::ConnectRequest bad;
  bad.set_peer_id(0);
  bad.set_address("not a ucx address");
  bad.set_data_plane_secret(std::string(16, 's'));
  bad.set_max_round_tokens(8);
  v1::ConnectResponse response;
  EXPECT_EQ(stub->Connect(&bad_context, bad, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  grpc::ClientContext wrong_model;
  bad.set_model_fingerprint("fnv1a64:0000000000000000");
  EXPECT_EQ(stub->Connect(&wrong_model, bad, &response).error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  // The data plane's rendezvous (docs/data-plane.md#admission-and-bounds), as an attention worker
  // does it, from a UCX endpoint in this process.
  auto local = transport::UcxTransport::Create(0);
  ASSERT_TRUE(local.ok()) << local.status();
  auto connect = [&](const std::string& address, const std::string& secret, int64_t max_round_tokens,
                     v1::ConnectResponse* out) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    v1::ConnectRequest request;
    request.set_peer_id(0);
    request.set_address(address);
    request.set_data_plane_secret(secret);
    request.set_max_round_tokens(max_round_tokens);
    return stub->Connect(&context, request, out).error_code();
  };
  auto our_secret = (*local)->Admit(1002, 1 << 20);
  ASSERT_TRUE(our_secret.ok());
  const std::string good = (*local)->WorkerAddress();
  // What aborted an expert worker in ucp_address_unpack: garbage address bytes, here also inside a
  // correct frame prefix. Each is INVALID_ARGUMENT and the worker lives on.
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    std::string garbage = good;
    for (size_t i = (seed % 2 == 0 ? 0 : 8); i < garbage.size(); ++i) {
      garbage[i] = static_cast<char>((i * 2654435761u + seed * 40503u) >> 13);
    }
    EXPECT_EQ(connect(garbage, *our_secret, 8, &response), grpc::StatusCode::INVALID_ARGUMENT) << seed;
  }
  EXPECT_EQ(connect(good, "short", 8, &response), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(connect(good, *our_secret, 0, &response), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(connect(good, *our_secret, int64_t{1} << 40, &response), grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_EQ(connect(good, *our_secret, 8, &response), grpc::StatusCode::OK);
  ASSERT_EQ(response.data_plane_secret().size(), 16u);
  ASSERT_TRUE((*local)->Connect(1002, info.address(), response.data_plane_secret()).ok());

  // An impostor claiming the same peer id, without the secret, is dropped: no answer.
  auto impostor = transport::UcxTransport::Create(0);
  ASSERT_TRUE(impostor.ok());
  ASSERT_TRUE((*impostor)->Connect(1002, info.address(), std::string(16, '\0')).ok());
  std::vector<std::byte> empty_round;
  auto config = model::ModelConfig::FromFile(model + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  transport::EncodeMoeMessageHeader(config->hidden_size, {}, &empty_round);
  const transport::MessageTag spoofed{transport::MessageKind::kDispatch, 1, 0, 0, 0};
  ASSERT_TRUE((*impostor)->Send(1002, spoofed, empty_round).ok());
  auto no_answer = (*impostor)->ReceiveAny(absl::Now() + absl::Milliseconds(500));
  EXPECT_TRUE(absl::IsUnavailable(no_answer.status())) << no_answer.status();
  // The admitted endpoint gets its round answered (an empty dispatch: an empty combine).
  const transport::MessageTag dispatch{transport::MessageKind::kDispatch, 2, 0, 0, 0};
  ASSERT_TRUE((*local)->Send(1002, dispatch, empty_round).ok());
  const transport::MessageTag combine{transport::MessageKind::kCombine, 2, 0, 0, 1002};
  auto answer = (*local)->ReceiveTagged(combine, absl::Now() + absl::Seconds(10));
  EXPECT_TRUE(answer.ok()) << answer.status();
  (*local)->Shutdown();
  (*impostor)->Shutdown();

  (*child)->Signal(SIGTERM);
  const std::optional<int> status = (*child)->Wait(absl::Seconds(10));
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0);
}

// Connect and Drain change a live worker: with mTLS only an attention worker's certificate may
// Connect and only an operator's may Drain; Drain turns readiness NOT_SERVING.
TEST(ExpertWorkerProcessTest, ConnectAndDrainNeedTheirRolesAndDrainTurnsReadinessOff) {
  const std::string& model = moe::testing::TestModelDir("tiny", "bf16");
  auto cluster = rpc::MakeClusterCertificates(moe::testing::MakeTempDir("expert_roles"), "test CA");
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  const rpc::TlsOptions own = rpc::RoleTlsOptions(*cluster, "expert-worker");
  const int port = moe::testing::FreePort();
  const std::string address = moe::testing::LocalAddress(port);
  const std::string health_address = moe::testing::LocalAddress(moe::testing::FreePort());
  auto child = moe::testing::ChildProcess::Start(
      moe::testing::BinaryPath("moe-expert-worker"),
      {"--model", model, "--listen", address, "--metrics_port", "0", "--tls_ca", own.ca_file, "--tls_cert",
       own.cert_file, "--tls_key", own.key_file, "--health_listen", health_address});
  ASSERT_TRUE(child.ok());
  auto credentials = [&](const std::string& role) {
    return *rpc::MakeClientCredentials(rpc::RoleTlsOptions(*cluster, role));
  };
  const rpc::ClientCredentials operator_credentials = credentials("operator");
  ASSERT_TRUE(moe::testing::WaitForHealth(address, "readiness", true, absl::Now() + absl::Seconds(60),
                                          operator_credentials)
                  .ok());

  auto stub_as = [&](const rpc::ClientCredentials& c) {
    return v1::ExpertControl::NewStub(c.CreateChannel(address));
  };
  v1::ConnectRequest bad;
  bad.set_peer_id(0);
  bad.set_address("not a ucx address");
  v1::ConnectResponse connected;
  for (const std::string role : {"operator", "router", "expert-worker"}) {
    grpc::ClientContext context;
    const grpc::Status status = stub_as(credentials(role))->Connect(&context, bad, &connected);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED)
        << role << ": " << status.error_message();
    EXPECT_NE(status.error_message().find(rpc::kAttentionWorkerRole), std::string::npos);
  }
  {
    // The attention worker's certificate passes the role check and reaches the address check.
    grpc::ClientContext context;
    EXPECT_EQ(stub_as(credentials("attention-worker"))->Connect(&context, bad, &connected).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  for (const std::string role : {"attention-worker", "router"}) {
    grpc::ClientContext context;
    v1::LoadExtraExpertsResponse loaded;
    EXPECT_EQ(stub_as(credentials(role))
                  ->LoadExtraExperts(&context, v1::LoadExtraExpertsRequest(), &loaded)
                  .error_code(),
              grpc::StatusCode::PERMISSION_DENIED)
        << role;
  }
  v1::DrainResponse drained;
  for (const std::string role : {"attention-worker", "router"}) {
    grpc::ClientContext context;
    EXPECT_EQ(stub_as(credentials(role))->Drain(&context, v1::DrainRequest(), &drained).error_code(),
              grpc::StatusCode::PERMISSION_DENIED)
        << role;
  }
  EXPECT_TRUE(moe::testing::IsServing(address, "readiness", absl::Seconds(1), operator_credentials));
  // The probe port answers health in plaintext (kubelet has no certificate); the control port does not.
  EXPECT_TRUE(moe::testing::IsServing(health_address, "readiness"));
  EXPECT_FALSE(moe::testing::IsServing(address, "readiness"));
  {
    grpc::ClientContext context;
    v1::ExpertWorkerInfo info;
    auto plain =
        v1::ExpertControl::NewStub(grpc::CreateChannel(health_address, grpc::InsecureChannelCredentials()));
    EXPECT_EQ(plain->GetInfo(&context, v1::GetInfoRequest(), &info).error_code(),
              grpc::StatusCode::UNIMPLEMENTED);
  }

  grpc::ClientContext drain_context;
  ASSERT_TRUE(stub_as(operator_credentials)->Drain(&drain_context, v1::DrainRequest(), &drained).ok());
  EXPECT_TRUE(moe::testing::WaitForHealth(address, "readiness", false, absl::Now() + absl::Seconds(5),
                                          operator_credentials)
                  .ok());
  EXPECT_FALSE(moe::testing::IsServing(health_address, "readiness"));
  grpc::ClientContext after;
  EXPECT_EQ(stub_as(credentials("attention-worker"))->Connect(&after, bad, &connected).error_code(),
            grpc::StatusCode::UNAVAILABLE);

  (*child)->Signal(SIGTERM);
  const std::optional<int> status = (*child)->Wait(absl::Seconds(10));
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0);
}

// The expert load balancer's RPC (docs/architecture.md#expert-load-balancer): extra experts load
// within --extra_expert_budget_bytes, every bad field is named, and GetInfo reports the set.
TEST(ExpertWorkerProcessTest, LoadExtraExpertsValidatesAndEnforcesTheBudget) {
  const std::string& model = moe::testing::TestModelDir("tiny", "bf16");
  // tiny: 4 MoE layers of experts [128, 128] x 3 projections in bf16: 393216 bytes per expert.
  constexpr int64_t kExpertBytes = 4 * 3 * 128 * 128 * 2;
  const std::string address = moe::testing::LocalAddress(moe::testing::FreePort());
  auto child = moe::testing::ChildProcess::Start(
      moe::testing::BinaryPath("moe-expert-worker"),
      {"--model", model, "--rank", "0", "--num_expert_workers", "2", "--listen", address, "--metrics_port",
       "0", "--insecure", "--extra_expert_budget_bytes", std::to_string(2 * kExpertBytes)});
  ASSERT_TRUE(child.ok());
  ASSERT_TRUE(moe::testing::WaitForHealth(address, "readiness", true, absl::Now() + absl::Seconds(60)).ok());
  auto stub = v1::ExpertControl::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  auto load = [&](uint64_t version, std::vector<int32_t> experts, v1::LoadExtraExpertsResponse* response,
                  std::optional<uint64_t> replaces = std::nullopt) {
    grpc::ClientContext context;
    v1::LoadExtraExpertsRequest request;
    request.set_placement_version(version);
    if (replaces.has_value()) request.set_replaces_version(*replaces);
    for (int32_t e : experts) request.add_experts(e);
    return stub->LoadExtraExperts(&context, request, response);
  };
  v1::LoadExtraExpertsResponse response;
  struct Bad {
    std::vector<int32_t> experts;
    grpc::StatusCode code;
    std::string names;
  };
  // Worker 0 of 2 holds [0, 64).
  for (const Bad& bad : std::vector<Bad>{
           {{64, 128}, grpc::StatusCode::INVALID_ARGUMENT, "experts[1]: 128"},
           {{-1}, grpc::StatusCode::INVALID_ARGUMENT, "experts[0]: -1"},
           {{3}, grpc::StatusCode::INVALID_ARGUMENT, "home shard"},
           {{70, 70}, grpc::StatusCode::INVALID_ARGUMENT, "experts[1]: 70 is given twice"},
           {{64, 65, 66}, grpc::StatusCode::RESOURCE_EXHAUSTED, "--extra_expert_budget_bytes"}}) {
    const grpc::Status status = load(1, bad.experts, &response);
    EXPECT_EQ(status.error_code(), bad.code) << bad.names << ": " << status.error_message();
    EXPECT_NE(status.error_message().find(bad.names), std::string::npos) << status.error_message();
  }
  ASSERT_TRUE(load(2, {100, 64}, &response).ok());
  EXPECT_EQ(response.info().placement_version(), 2u);
  EXPECT_EQ(
      std::vector<int32_t>(response.info().extra_experts().begin(), response.info().extra_experts().end()),
      std::vector<int32_t>({64, 100}));
  EXPECT_EQ(response.info().extra_expert_budget_bytes(), 2 * kExpertBytes);
  // An older version is refused and the set stays; the same version may trim it.
  const grpc::Status older = load(1, {64}, &response);
  EXPECT_EQ(older.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(older.error_message().find("placement_version"), std::string::npos);
  ASSERT_TRUE(load(2, {64}, &response).ok());
  grpc::ClientContext context;
  v1::ExpertWorkerInfo info;
  ASSERT_TRUE(stub->GetInfo(&context, v1::GetInfoRequest(), &info).ok());
  EXPECT_EQ(info.placement_version(), 2u);
  ASSERT_EQ(info.extra_experts_size(), 1);
  EXPECT_EQ(info.extra_experts(0), 64);
  // Compare-and-set (replaces_version): a writer that read another version than the worker's is
  // refused and the set stays; one that read it goes ahead.
  const grpc::Status stale = load(3, {100}, &response, 1);
  EXPECT_EQ(stale.error_code(), grpc::StatusCode::ABORTED) << stale.error_message();
  EXPECT_NE(stale.error_message().find("replaces_version: 1 is not this worker's placement version, 2"),
            std::string::npos)
      << stale.error_message();
  ASSERT_TRUE(load(3, {100}, &response, 2).ok());
  EXPECT_EQ(response.info().placement_version(), 3u);
  // The set it holds again: only the version changes (a balancer claiming the worker).
  ASSERT_TRUE(load(4, {100}, &response, 3).ok());
  EXPECT_EQ(response.info().placement_version(), 4u);
  EXPECT_EQ(
      std::vector<int32_t>(response.info().extra_experts().begin(), response.info().extra_experts().end()),
      std::vector<int32_t>({100}));
  (*child)->Signal(SIGTERM);
  EXPECT_TRUE((*child)->Wait(absl::Seconds(10)).has_value());
}

}  // namespace
}  // namespace moe::services
