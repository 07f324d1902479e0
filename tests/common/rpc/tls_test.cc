// mTLS on the internal hops (common/rpc/tls.h): a server made with MakeServerCredentials accepts
// only clients whose certificate the cluster CA signed; the TLS flags fail clearly when a file is
// missing, empty or when neither --tls_* nor --insecure is given. Certificates are made at test
// time with the openssl command (common/rpc/tls_certificates.h), never checked in.
#include "common/rpc/tls.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/rpc/server.h"
#include "common/rpc/tls_certificates.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"

namespace moe::rpc {
namespace {

std::string MakeDir(const std::string& name) {
  std::string pattern = absl::StrCat(::testing::TempDir(), "/tls_test_", name, "_XXXXXX");
  const char* dir = mkdtemp(pattern.data());
  return dir == nullptr ? "" : std::string(dir);
}

grpc::Status CheckHealth(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service("liveness");
  grpc::health::v1::HealthCheckResponse response;
  return stub->Check(&context, request, &response);
}

class MutualTlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto cluster = MakeClusterCertificates(MakeDir("cluster"), "test cluster CA");
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    auto other = MakeClusterCertificates(MakeDir("other"), "another CA");
    ASSERT_TRUE(other.ok()) << other.status();
    cluster_ = new TlsOptions(*cluster);
    other_ = new TlsOptions(*other);
  }

  void SetUp() override {
    auto material = LoadTlsMaterial(*cluster_);
    ASSERT_TRUE(material.ok()) << material.status();
    auto server = GrpcServer::Start("127.0.0.1:0", {}, 64 << 20, MakeServerCredentials(*cluster_, *material));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    address_ = absl::StrCat("127.0.0.1:", server_->port());
  }

  static TlsOptions* cluster_;
  static TlsOptions* other_;
  std::unique_ptr<GrpcServer> server_;
  std::string address_;
};

TlsOptions* MutualTlsTest::cluster_ = nullptr;
TlsOptions* MutualTlsTest::other_ = nullptr;

TEST_F(MutualTlsTest, AcceptsAClientWithACertificateOfTheClusterCa) {
  auto credentials = MakeClientCredentials(*cluster_);
  ASSERT_TRUE(credentials.ok()) << credentials.status();
  EXPECT_TRUE(credentials->secure());
  const grpc::Status status = CheckHealth(credentials->CreateChannel(address_));
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST_F(MutualTlsTest, RefusesAClientWithoutACertificate) {
  auto material = LoadTlsMaterial(*cluster_);
  ASSERT_TRUE(material.ok());
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = material->ca_pem;  // trusts the server, presents nothing
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride(kClusterServerName);
  const grpc::Status status =
      CheckHealth(grpc::CreateCustomChannel(address_, grpc::SslCredentials(ssl), args));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
}

TEST_F(MutualTlsTest, RefusesAClientWithACertificateOfAnotherCa) {
  TlsOptions impostor = *other_;
  impostor.ca_file = cluster_->ca_file;  // trusts the server; its own certificate is another CA's
  auto credentials = MakeClientCredentials(impostor);
  ASSERT_TRUE(credentials.ok()) << credentials.status();
  const grpc::Status status = CheckHealth(credentials->CreateChannel(address_));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
}

TEST_F(MutualTlsTest, RefusesAPlaintextClient) {
  const grpc::Status status = CheckHealth(ClientCredentials().CreateChannel(address_));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
}

TEST_F(MutualTlsTest, AClientRefusesAServerOfAnotherCa) {
  auto credentials = MakeClientCredentials(*other_);  // trusts only the other CA
  ASSERT_TRUE(credentials.ok()) << credentials.status();
  const grpc::Status status = CheckHealth(credentials->CreateChannel(address_));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
}

TEST_F(MutualTlsTest, APublicPortServesTlsToClientsWithoutACertificateAndRefusesPlaintext) {
  auto credentials = MakePublicServerCredentials(cluster_->cert_file, cluster_->key_file);
  ASSERT_TRUE(credentials.ok()) << credentials.status();
  auto server = GrpcServer::Start("127.0.0.1:0", {}, 64 << 20, *credentials);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = absl::StrCat("127.0.0.1:", (*server)->port());
  auto material = LoadTlsMaterial(*cluster_);
  ASSERT_TRUE(material.ok());
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = material->ca_pem;  // a public client: trusts the server, presents nothing
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride(kClusterServerName);
  grpc::Status status = CheckHealth(grpc::CreateCustomChannel(address, grpc::SslCredentials(ssl), args));
  EXPECT_TRUE(status.ok()) << status.error_message();
  status = CheckHealth(ClientCredentials().CreateChannel(address));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
}

TEST(PublicTlsTest, NeitherFileIsPlaintextAndOneWithoutTheOtherIsAnError) {
  EXPECT_TRUE(MakePublicServerCredentials("", "").ok());
  auto half = MakePublicServerCredentials("cert.pem", "");
  ASSERT_FALSE(half.ok());
  EXPECT_NE(half.status().message().find("--public_tls_key"), std::string::npos) << half.status();
  auto missing = MakePublicServerCredentials("/nonexistent/cert.pem", "/nonexistent/key.pem");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("--public_tls_cert"), std::string::npos) << missing.status();
}

TEST(TlsOptionsTest, NeitherTlsFlagsNorInsecureIsAnErrorSayingWhatToPass) {
  auto material = LoadTlsMaterial(TlsOptions{});
  EXPECT_EQ(material.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(material.status().message().find("pass --tls_ca, --tls_cert and --tls_key"), std::string::npos)
      << material.status();
  EXPECT_NE(material.status().message().find("--insecure"), std::string::npos) << material.status();
}

TEST(TlsOptionsTest, InsecureNeedsNoFilesAndGivesPlaintextClients) {
  TlsOptions options;
  options.insecure = true;
  auto credentials = MakeClientCredentials(options);
  ASSERT_TRUE(credentials.ok()) << credentials.status();
  EXPECT_FALSE(credentials->secure());
}

TEST(TlsOptionsTest, SomeFilesMissingNamesTheMissingFlags) {
  TlsOptions options;
  options.ca_file = "/ca.crt";
  auto material = LoadTlsMaterial(options);
  EXPECT_EQ(material.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(material.status().message(),
            "mTLS needs --tls_ca, --tls_cert and --tls_key; missing: --tls_cert, --tls_key");
}

TEST(TlsOptionsTest, AMissingFileIsNotFoundNamingTheFlagAndPath) {
  const std::string dir = MakeDir("missing");
  TlsOptions options;
  options.ca_file = dir + "/ca.crt";
  options.cert_file = dir + "/tls.crt";
  options.key_file = dir + "/tls.key";
  auto material = LoadTlsMaterial(options);
  EXPECT_EQ(material.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(material.status().message(),
            absl::StrCat("--tls_ca: cannot read '", dir, "/ca.crt': No such file or directory"));
}

TEST(TlsOptionsTest, AnEmptyFileIsAnErrorNamingTheFlagAndPath) {
  auto certificates = MakeClusterCertificates(MakeDir("empty"), "test CA");
  ASSERT_TRUE(certificates.ok()) << certificates.status();
  std::ofstream(certificates->key_file, std::ios::trunc).close();
  auto material = LoadTlsMaterial(*certificates);
  EXPECT_EQ(material.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(material.status().message(), absl::StrCat("--tls_key: '", certificates->key_file, "' is empty"));
}

// Internal channels reconnect within a second of a worker coming back, not on gRPC's default
// backoff (which grows to minutes).
TEST(InternalChannelTest, DefaultsAreAShortReconnectBackoff) {
  grpc::ChannelArguments args;
  ApplyInternalChannelDefaults(&args);
  grpc_channel_args c_args;
  args.SetChannelArgs(&c_args);
  std::map<std::string, int> ints;
  for (size_t i = 0; i < c_args.num_args; ++i) {
    if (c_args.args[i].type == GRPC_ARG_INTEGER) ints[c_args.args[i].key] = c_args.args[i].value.integer;
  }
  EXPECT_EQ(ints[GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS], 100);
  EXPECT_EQ(ints[GRPC_ARG_MAX_RECONNECT_BACKOFF_MS], 1000);
  EXPECT_EQ(ints[GRPC_ARG_MIN_RECONNECT_BACKOFF_MS], kInternalMinConnectTimeoutMs);
}

// A connection attempt whose handshake is slow is not abandoned after the short backoff: against a
// listener that accepts TCP connections and never answers (the HTTP/2 handshake never completes),
// the channel stays CONNECTING for seconds. With a 100 ms minimum connect timeout the attempt was
// abandoned at once (TRANSIENT_FAILURE, "handshaker shutdown") and a call on a fresh channel to a
// busy worker failed UNAVAILABLE.
TEST(InternalChannelTest, ASlowHandshakeIsNotAbandonedWithinSeconds) {
  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(listener, 16), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  TlsOptions options;
  options.insecure = true;
  absl::StatusOr<ClientCredentials> credentials = MakeClientCredentials(options);
  ASSERT_TRUE(credentials.ok()) << credentials.status();
  auto channel = credentials->CreateChannel(absl::StrCat("127.0.0.1:", ntohs(addr.sin_port)));
  ASSERT_EQ(channel->GetState(/*try_to_connect=*/true), GRPC_CHANNEL_IDLE);
  ASSERT_TRUE(
      channel->WaitForStateChange(GRPC_CHANNEL_IDLE, absl::ToChronoTime(absl::Now() + absl::Seconds(10))));
  ASSERT_EQ(channel->GetState(false), GRPC_CHANNEL_CONNECTING);
  // No change (to TRANSIENT_FAILURE) while the attempt waits for the server's settings.
  EXPECT_FALSE(channel->WaitForStateChange(GRPC_CHANNEL_CONNECTING,
                                           absl::ToChronoTime(absl::Now() + absl::Seconds(3))))
      << "state " << channel->GetState(false);
  close(listener);
}

}  // namespace
}  // namespace moe::rpc
