#include "common/rpc/server.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"

namespace moe::rpc {

absl::StatusOr<std::unique_ptr<GrpcServer>> GrpcServer::Start(
    const std::string& listen, const std::vector<grpc::Service*>& services, int max_message_bytes,
    std::shared_ptr<grpc::ServerCredentials> credentials) {
  if (absl::Status s = ValidateHostPort("listen", listen); !s.ok()) return s;
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // gRPC sets SO_REUSEPORT by default on Linux: a second server on a taken port would then bind
  // "successfully" and share the port with the first. A taken port must be a startup error.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  auto server = std::unique_ptr<GrpcServer>(new GrpcServer());
  if (credentials == nullptr) credentials = grpc::InsecureServerCredentials();
  builder.AddListeningPort(listen, credentials, &server->port_);
  builder.SetMaxReceiveMessageSize(max_message_bytes);
  builder.SetMaxSendMessageSize(max_message_bytes);
  for (grpc::Service* service : services) builder.RegisterService(service);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", listen, ": the port is taken by another process or the host is not local"));
  }
  grpc::HealthCheckServiceInterface* health = server->server_->GetHealthCheckService();
  health->SetServingStatus("startup", false);
  health->SetServingStatus("liveness", true);
  health->SetServingStatus("readiness", false);
  health->SetServingStatus("", false);
  return server;
}

GrpcServer::~GrpcServer() {
  Shutdown(absl::ZeroDuration());
}

std::shared_ptr<grpc::Channel> GrpcServer::InProcessChannel() {
  return server_->InProcessChannel(grpc::ChannelArguments());
}

void GrpcServer::SetStarted() {
  server_->GetHealthCheckService()->SetServingStatus("startup", true);
}

void GrpcServer::SetReady(bool ready) {
  ready_ = ready;
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  health->SetServingStatus("readiness", ready);
  health->SetServingStatus("", ready);
}

void GrpcServer::Shutdown(absl::Duration grace) {
  if (server_ == nullptr) return;
  server_->GetHealthCheckService()->Shutdown();
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  server_->Wait();
  server_.reset();
}

void GrpcServer::Wait() {
  if (server_ != nullptr) server_->Wait();
}

absl::Status ValidateHostPort(const std::string& flag, const std::string& value) {
  const size_t colon = value.rfind(':');
  int port = -1;
  if (colon == std::string::npos || colon == 0 || !absl::SimpleAtoi(value.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": '", value, "' is not HOST:PORT with a port in [0, 65535]"));
  }
  return absl::OkStatus();
}

}  // namespace moe::rpc
