// A gRPC server with the standard health service (grpc.health.v1.Health, with the service names
// "startup", "liveness", "readiness" and "" of deploy/k8s/README.md) and server reflection.
#ifndef MOE_COMMON_RPC_SERVER_H_
#define MOE_COMMON_RPC_SERVER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"

namespace moe::rpc {

class GrpcServer {
 public:
  // Binds `listen` ("host:port"; port 0 picks a free one) and serves `services` (not owned; must
  // outlive the server). Health starts as: startup NOT_SERVING, liveness SERVING, readiness and ""
  // NOT_SERVING. UNAVAILABLE naming `listen` if the address cannot be bound, including when another
  // socket already listens on the port (SO_REUSEPORT is off: two servers never share a port).
  // `credentials`: the listener's (common/rpc/tls.h MakeServerCredentials); null is plaintext, for
  // tests of something else and the router's public port.
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(
      const std::string& listen, const std::vector<grpc::Service*>& services,
      int max_message_bytes = 64 << 20, std::shared_ptr<grpc::ServerCredentials> credentials = nullptr);
  ~GrpcServer();

  int port() const { return port_; }
  // A channel to this server's services without a socket (the router's HTTP API calls its own
  // Generation service through it). Valid until Shutdown.
  std::shared_ptr<grpc::Channel> InProcessChannel();
  // Marks startup done (stays SERVING).
  void SetStarted();
  // Sets readiness ("readiness" and "").
  void SetReady(bool ready);
  bool ready() const { return ready_; }
  // Stops accepting calls and cancels open ones after `grace`.
  void Shutdown(absl::Duration grace);
  void Wait();

 private:
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool ready_ = false;
};

// "host:port" validation for flags: INVALID_ARGUMENT naming `flag`.
absl::Status ValidateHostPort(const std::string& flag, const std::string& value);

}  // namespace moe::rpc

#endif  // MOE_COMMON_RPC_SERVER_H_
