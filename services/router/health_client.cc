#include "services/router/health_client.h"

#include <utility>
#include <vector>

namespace moe::router {
namespace {

// HealthCheckRequest{service = "readiness"}: field 1, wire type 2 (tag 0x0a), length, bytes.
constexpr char kReadinessRequest[] = "\x0a\x09readiness";
// HealthCheckResponse{status = SERVING (1)}: field 1, varint (tag 0x08), value 1.
bool IsServing(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return false;
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return bytes == std::string("\x08\x01", 2);
}

}  // namespace

HealthClient::HealthClient(std::string address, const rpc::ClientCredentials& credentials)
    : address_(std::move(address)) {
  channel_ = credentials.CreateChannel(address_);
  stub_ = std::make_unique<grpc::GenericStub>(channel_);
}

void HealthClient::CheckReadiness(absl::Duration timeout, std::function<void(bool)> done) {
  struct Call {
    grpc::ClientContext context;
    grpc::ByteBuffer request;
    grpc::ByteBuffer response;
  };
  auto call = std::make_shared<Call>();
  call->context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  grpc::Slice slice(kReadinessRequest, sizeof(kReadinessRequest) - 1);
  call->request = grpc::ByteBuffer(&slice, 1);
  stub_->UnaryCall(&call->context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &call->request,
                   &call->response, [call, done = std::move(done)](grpc::Status status) {
                     done(status.ok() && IsServing(call->response));
                   });
}

}  // namespace moe::router
