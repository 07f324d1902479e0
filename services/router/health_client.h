// Readiness of a peer through the standard grpc.health.v1.Health/Check (service "readiness"),
// spoken with a generic stub so the router needs no generated health code.
#ifndef MOE_SERVICES_ROUTER_HEALTH_CLIENT_H_
#define MOE_SERVICES_ROUTER_HEALTH_CLIENT_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "common/rpc/tls.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"

namespace moe::router {

// Thread-safe.
class HealthClient {
 public:
  // Dials `address` with `credentials` (mTLS, or plaintext with --insecure).
  HealthClient(std::string address, const rpc::ClientCredentials& credentials);
  const std::string& address() const { return address_; }
  // Calls Check("readiness"); `done(serving)` runs on a gRPC thread. Any error is "not serving".
  void CheckReadiness(absl::Duration timeout, std::function<void(bool serving)> done);

 private:
  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<grpc::GenericStub> stub_;
};

}  // namespace moe::router

#endif  // MOE_SERVICES_ROUTER_HEALTH_CLIENT_H_
