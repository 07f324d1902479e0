// The process setup every service shares (its one copy; services/*/main.cc keep only what is
// theirs): flags with MOE_* environment fallback, --help and --version, glog logging at
// --log_level, termination signals, the process metrics and the /metrics exposer, and the gRPC
// server with its health service.
//
//   int main(int argc, char** argv) {
//     auto service = moe::rpc::ServiceMain::Init(argc, argv, {.binary = "moe-x", .role = "x", ...});
//     if (bad flag) return service->Fail("--foo must be > 0");
//     if (absl::Status s = service->Serve({&grpc_service}); !s.ok()) return service->Fail(s);
//     service->SetStarted();
//     service->SetReady(true);
//     service->WaitForTerminationSignal();
//     ... stop the service's own parts, then service->server()->Shutdown(grace).
//   }
//
// Flags defined here, common to every service: --listen, --health_listen, --metrics_listen, --metrics_port,
// --log_level, --worker_price_per_hour, mTLS: --tls_ca, --tls_cert, --tls_key or --insecure
// (common/rpc/tls.h, docs/operations.md#security), and for a public listener --public_tls_cert and
// --public_tls_key.
//
// Thread safety: Init, Serve, SetStarted and WaitForTerminationSignal from main only; SetReady from
// any thread.
#ifndef MOE_COMMON_RPC_SERVICE_MAIN_H_
#define MOE_COMMON_RPC_SERVICE_MAIN_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/logging/logging.h"  // IWYU pragma: export
#include "common/rpc/server.h"
#include "common/rpc/tls.h"
#include "prometheus/gauge.h"

namespace moe::rpc {

struct ServiceDescription {
  // The binary's name, e.g. "moe-router": --help, --version and the log lines.
  std::string binary;
  // The service label of moe_build_info: "router", "attention_worker" or "expert_worker".
  std::string role;
  // What the service does and its typical command line: the first lines of --help.
  std::string usage;
  // The router: its --listen port serves the public API, with TLS from --public_tls_cert/_key or in
  // plaintext, never asking for a client certificate (the mTLS flags apply to its clients only;
  // docs/operations.md#security).
  bool public_listener = false;
};

class ServiceMain {
 public:
  // Parses the flags (exits 0 after --help or --version, 2 on a bad flag or variable), initializes
  // logging at --log_level (exits 2 on a bad level), blocks SIGTERM and SIGINT in this thread and
  // every thread it starts later, registers the process metrics with this process's
  // --worker_price_per_hour (exits 2 if negative) and starts /metrics on --metrics_listen:
  // --metrics_port (exits 1 if it cannot bind). Reads the mTLS files (exits 2 naming the flag and
  // path when one is missing, unreadable or empty, and when neither --tls_* nor --insecure is
  // given); --insecure logs a warning. Call first in main, before any thread starts.
  static std::unique_ptr<ServiceMain> Init(int argc, char** argv, ServiceDescription description);

  // "moe-router 0.1.0 (revision 1a2b3c4)": what --version prints.
  static std::string VersionLine(absl::string_view binary);

  // Logs `message` (or `status`) at ERROR and returns 1, the exit code of a failed startup:
  // `return service->Fail(...)` in main.
  int Fail(absl::string_view message) const;
  int Fail(const absl::Status& status) const;

  // Serves `services` (not owned; they outlive the server) on --listen with the health service,
  // requiring client certificates signed by --tls_ca unless --insecure or public_listener.
  // UNAVAILABLE naming the address when it cannot be bound (e.g. the port is taken).
  absl::Status Serve(const std::vector<grpc::Service*>& services, int max_message_bytes = 64 << 20);
  // With --health_listen, also starts a plaintext server with only the health service there (its
  // statuses follow SetStarted/SetReady). The server Serve started (null before).
  GrpcServer* server() const { return server_.get(); }
  int metrics_port() const { return metrics_port_; }
  // --public_tls_cert and --public_tls_key (empty when unset): what the router's HTTP API serves too.
  static std::string public_tls_cert_file();
  static std::string public_tls_key_file();
  // --worker_price_per_hour: this process's own price in dollars per hour (>= 0).
  double worker_price_per_hour() const;
  const ServiceDescription& description() const { return description_; }
  // How this process dials the cluster's other services: mTLS with --tls_*, plaintext with
  // --insecure.
  const ClientCredentials& client_credentials() const { return client_credentials_; }

  // Startup done: the "startup" health check turns SERVING.
  void SetStarted();
  // Readiness: the "readiness" and "" health checks and the moe_ready gauge.
  void SetReady(bool ready);

  // Waits for SIGTERM or SIGINT, logs it, marks the process not ready, and returns the signal.
  int WaitForTerminationSignal();

 private:
  ServiceMain(ServiceDescription description, prometheus::Gauge& ready_gauge, int metrics_port,
              std::shared_ptr<grpc::ServerCredentials> server_credentials,
              ClientCredentials client_credentials)
      : description_(std::move(description)),
        ready_gauge_(ready_gauge),
        metrics_port_(metrics_port),
        server_credentials_(std::move(server_credentials)),
        client_credentials_(std::move(client_credentials)) {}

  const ServiceDescription description_;
  prometheus::Gauge& ready_gauge_;
  const int metrics_port_;
  const std::shared_ptr<grpc::ServerCredentials> server_credentials_;
  const ClientCredentials client_credentials_;
  std::unique_ptr<GrpcServer> server_;
  std::unique_ptr<GrpcServer> health_server_;  // --health_listen
};

}  // namespace moe::rpc

#endif  // MOE_COMMON_RPC_SERVICE_MAIN_H_
