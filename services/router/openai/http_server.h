// The router's OpenAI-compatible HTTP API (docs/http-api.md) on cpp-httplib: a translator in front of
// the router's own moe.v1.Generation service. Every request becomes Generate / GetModelInfo calls on
// the in-process channel of the router's gRPC server, so validation, admission, metrics, cancellation
// and errors have one code path; the HTTP `Authorization` header travels as the gRPC metadata
// `authorization`, and gRPC statuses become HTTP statuses with an OpenAI-style error object
// (openai_protocol.h FromGrpcStatus).
//
//   POST /v1/chat/completions, POST /v1/completions  (JSON, or SSE with "stream": true)
//   GET  /v1/models
//   GET  /health   200 when the router is ready, 503 otherwise (no authentication)
//
// Connections: a pool of `num_threads` threads (each open connection holds one, an SSE stream for
// its whole length); idle keep-alive connections are closed after `keep_alive_timeout`, a client that
// sends nothing for `read_timeout` is dropped. Bodies over `max_body_bytes` get 413. A client that
// disconnects mid-stream has its Generate calls cancelled at the next message (the worker frees the
// sequence).
//
// Thread safety: Start, port and Stop from one thread; the server's threads serve requests.
#ifndef MOE_SERVICES_ROUTER_OPENAI_HTTP_SERVER_H_
#define MOE_SERVICES_ROUTER_OPENAI_HTTP_SERVER_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "moe/v1/generate.grpc.pb.h"
#include "services/router/openai/openai_protocol.h"

namespace httplib {
class Server;
}

namespace moe::router::openai {

struct HttpServerOptions {
  // "host:port" ("[::1]:8000" for IPv6); port 0 picks a free one (port()).
  std::string listen = "127.0.0.1:0";
  // 64 concurrent SSE streams with headroom for the non-streaming calls and idle keep-alives.
  int num_threads = 128;
  absl::Duration read_timeout = absl::Seconds(30);
  absl::Duration write_timeout = absl::Seconds(30);
  absl::Duration keep_alive_timeout = absl::Seconds(5);
  size_t max_body_bytes = 8 << 20;
  // The served model's name: the "model" of responses to requests that name none.
  std::string model_name;
  // Readiness for /health (the router's: an attention worker is ready). Required.
  std::function<bool()> ready;
  // Token id -> text, for logprobs. Required.
  TokenText token_text;
  // TLS (HTTPS) with this PEM certificate (chain) and key, as the router's --public_tls_cert and
  // --public_tls_key; both empty: plain HTTP.
  std::string tls_cert_file;
  std::string tls_key_file;
};

class HttpServer {
 public:
  // Binds `options.listen` and starts serving in a thread of its own. `channel`: the router's
  // in-process channel (grpc::Server::InProcessChannel), which must outlive the server.
  // INVALID_ARGUMENT for a malformed address, UNAVAILABLE naming it when it cannot be bound.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(std::shared_ptr<grpc::Channel> channel,
                                                           HttpServerOptions options);
  ~HttpServer();  // Stop()

  int port() const { return port_; }
  // Stops accepting and waits for the serving threads, open streams included: shut the gRPC server
  // down first (it ends the open calls after its grace), then this.
  void Stop();

 private:
  HttpServer(std::shared_ptr<grpc::Channel> channel, HttpServerOptions options);
  void Register();

  const std::shared_ptr<grpc::Channel> channel_;
  const std::unique_ptr<moe::v1::Generation::Stub> stub_;
  const HttpServerOptions options_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  // Set by thread_ when httplib's accept loop has returned (see Stop).
  std::atomic<bool> listen_done_{false};
  int port_ = 0;
};

}  // namespace moe::router::openai

#endif  // MOE_SERVICES_ROUTER_OPENAI_HTTP_SERVER_H_
