#include "common/rpc/service_main.h"

#include <cstdlib>
#include <cstring>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/metrics/build_info.h"
#include "common/metrics/metrics.h"
#include "common/rpc/flags.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50051", "gRPC listen address HOST:PORT (port 0: any)");
ABSL_FLAG(std::string, metrics_listen, "0.0.0.0",
          "address /metrics binds (0.0.0.0: every interface; 127.0.0.1: this host only)");
ABSL_FLAG(int, metrics_port, 9090, "Prometheus /metrics port (0: any)");
ABSL_FLAG(std::string, health_listen, "",
          "also serve only grpc.health.v1 in plaintext on HOST:PORT, for probes that cannot present a "
          "client certificate (kubelet); empty: no such port");
ABSL_FLAG(std::string, log_level, "info",
          "minimum level of the log lines on stderr: debug, info, warning or error");
ABSL_FLAG(double, worker_price_per_hour, 0,
          "dollars per hour of this process, exported as moe_worker_price_per_hour_dollars");

ABSL_FLAG(std::string, tls_ca, "", "mTLS: PEM file of the cluster CA that signs every internal certificate");
ABSL_FLAG(std::string, tls_cert, "", "mTLS: PEM certificate of this process, signed by --tls_ca");
ABSL_FLAG(std::string, tls_key, "", "mTLS: PEM private key of --tls_cert");
ABSL_FLAG(std::string, public_tls_cert, "",
          "router: PEM certificate (chain) for TLS on the public --listen port (with --public_tls_key); "
          "unset: the public port is plaintext");
ABSL_FLAG(std::string, public_tls_key, "", "router: PEM private key of --public_tls_cert");
ABSL_FLAG(bool, insecure, false,
          "serve and dial the internal gRPC hops in plaintext, without authentication (instead of --tls_*)");

namespace moe::rpc {

std::string ServiceMain::VersionLine(absl::string_view binary) {
  return absl::StrCat(binary, " ", metrics::BuildVersion(), " (revision ", metrics::BuildRevision(), ")");
}

std::unique_ptr<ServiceMain> ServiceMain::Init(int argc, char** argv, ServiceDescription description) {
  ParseFlagsWithEnv(argc, argv, description.usage, VersionLine(description.binary));
  auto level = logging::ParseLogLevel(absl::GetFlag(FLAGS_log_level));
  if (!level.ok()) {
    std::cerr << description.binary << ": " << level.status().message() << std::endl;
    std::exit(2);
  }
  logging::InitLogging(argv[0], *level);
  BlockTerminationSignals();

  const double price = absl::GetFlag(FLAGS_worker_price_per_hour);
  if (!(price >= 0)) {
    LOG(ERROR) << description.binary << ": --worker_price_per_hour must be >= 0, got " << price;
    std::exit(2);
  }
  TlsOptions tls;
  tls.ca_file = absl::GetFlag(FLAGS_tls_ca);
  tls.cert_file = absl::GetFlag(FLAGS_tls_cert);
  tls.key_file = absl::GetFlag(FLAGS_tls_key);
  tls.insecure = absl::GetFlag(FLAGS_insecure);
  auto material = LoadTlsMaterial(tls);
  if (!material.ok()) {
    LOG(ERROR) << description.binary << ": " << material.status().message();
    std::exit(2);
  }
  if (tls.insecure) {
    LOG(WARNING) << description.binary
                 << ": WARNING: --insecure: the cluster's control plane is UNAUTHENTICATED and UNENCRYPTED; "
                    "anyone who can reach this process's gRPC port can call it. Use --tls_ca, --tls_cert "
                    "and --tls_key outside a test.";
  } else {
    LOG(INFO) << description.binary << ": mTLS with CA " << tls.ca_file << ", certificate " << tls.cert_file;
  }
  std::shared_ptr<grpc::ServerCredentials> server_credentials;
  const std::string public_cert = absl::GetFlag(FLAGS_public_tls_cert);
  const std::string public_key = absl::GetFlag(FLAGS_public_tls_key);
  if (description.public_listener) {
    auto credentials = MakePublicServerCredentials(public_cert, public_key);
    if (!credentials.ok()) {
      LOG(ERROR) << description.binary << ": " << credentials.status().message();
      std::exit(2);
    }
    server_credentials = *std::move(credentials);
    LOG(INFO) << description.binary << ": public port "
              << (public_cert.empty() ? "in plaintext (no --public_tls_cert)"
                                      : "with TLS, certificate " + public_cert);
  } else {
    if (!public_cert.empty() || !public_key.empty()) {
      LOG(ERROR) << description.binary
                 << ": --public_tls_cert and --public_tls_key are for the router's public port only";
      std::exit(2);
    }
    server_credentials = MakeServerCredentials(tls, *material);
  }
  ClientCredentials client_credentials(tls, *material);

  prometheus::Gauge& ready_gauge = metrics::RegisterProcessMetrics(description.role, price);
  auto metrics_port =
      metrics::StartExposer(absl::GetFlag(FLAGS_metrics_listen), absl::GetFlag(FLAGS_metrics_port));
  if (!metrics_port.ok()) {
    LOG(ERROR) << description.binary << ": " << metrics_port.status().message();
    std::exit(1);
  }
  LOG(INFO) << description.binary << ": "
            << VersionLine(description.binary).substr(description.binary.size() + 1) << ", /metrics on "
            << absl::GetFlag(FLAGS_metrics_listen) << ":" << *metrics_port;
  return std::unique_ptr<ServiceMain>(new ServiceMain(std::move(description), ready_gauge, *metrics_port,
                                                      std::move(server_credentials),
                                                      std::move(client_credentials)));
}

int ServiceMain::Fail(absl::string_view message) const {
  LOG(ERROR) << description_.binary << ": " << message;
  return 1;
}

int ServiceMain::Fail(const absl::Status& status) const {
  return Fail(status.ToString());
}

std::string ServiceMain::public_tls_cert_file() {
  return absl::GetFlag(FLAGS_public_tls_cert);
}

std::string ServiceMain::public_tls_key_file() {
  return absl::GetFlag(FLAGS_public_tls_key);
}

double ServiceMain::worker_price_per_hour() const {
  return absl::GetFlag(FLAGS_worker_price_per_hour);
}

absl::Status ServiceMain::Serve(const std::vector<grpc::Service*>& services, int max_message_bytes) {
  auto server =
      GrpcServer::Start(absl::GetFlag(FLAGS_listen), services, max_message_bytes, server_credentials_);
  if (!server.ok()) return server.status();
  server_ = std::move(*server);
  LOG(INFO) << description_.binary << ": gRPC on " << absl::GetFlag(FLAGS_listen) << " (port "
            << server_->port() << ")";
  if (const std::string health = absl::GetFlag(FLAGS_health_listen); !health.empty()) {
    // Health only: no service of ours is reachable here, so plaintext gives nothing away but status.
    auto health_server = GrpcServer::Start(health, {}, 4096, grpc::InsecureServerCredentials());
    if (!health_server.ok()) return health_server.status();
    health_server_ = std::move(*health_server);
    LOG(INFO) << description_.binary << ": plaintext health checks on " << health << " (port "
              << health_server_->port() << ")";
  }
  return absl::OkStatus();
}

void ServiceMain::SetStarted() {
  if (server_ != nullptr) server_->SetStarted();
  if (health_server_ != nullptr) health_server_->SetStarted();
}

void ServiceMain::SetReady(bool ready) {
  if (server_ != nullptr) server_->SetReady(ready);
  if (health_server_ != nullptr) health_server_->SetReady(ready);
  ready_gauge_.Set(ready ? 1 : 0);
}

int ServiceMain::WaitForTerminationSignal() {
  const int signal = rpc::WaitForTerminationSignal();
  LOG(INFO) << description_.binary << ": " << strsignal(signal) << ", stopping";
  SetReady(false);
  return signal;
}

}  // namespace moe::rpc
