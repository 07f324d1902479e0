#include "services/router/openai/http_server.h"

#include <sys/socket.h>

#include <chrono>
#include <deque>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "httplib.h"

namespace moe::router::openai {
namespace {

constexpr char kJson[] = "application/json";

void SendError(httplib::Response& res, const ApiError& error) {
  res.status = error.http_status;
  res.set_content(RenderError(error), kJson);
}

int64_t NowSeconds() {
  return absl::ToUnixSeconds(absl::Now());
}

// The Generate calls of one request: choice i on its own context. Destroying it cancels the calls
// that have not finished (a client that went away) and waits for their reader threads.
class ChoiceCalls {
 public:
  struct Event {
    int index;
    std::optional<moe::v1::GenerateResponse> message;  // nullopt: the call ended with `status`
    grpc::Status status;
  };

  ChoiceCalls(moe::v1::Generation::Stub* stub, const ParsedRequest& request, const std::string& authorization)
      : contexts_(request.n) {
    const uint64_t seed = request.seed.has_value() ? *request.seed : RandomSeed();
    for (int i = 0; i < request.n; ++i) {
      contexts_[i] = std::make_unique<grpc::ClientContext>();
      if (!authorization.empty()) contexts_[i]->AddMetadata("authorization", authorization);
      readers_.push_back(stub->Generate(contexts_[i].get(), ForChoice(request, seed, i)));
    }
  }
  ~ChoiceCalls() {
    Cancel();
    for (std::thread& t : threads_) t.join();
    // Calls read synchronously (non-streaming) are finished by Collect; streamed ones by their threads.
  }

  void Cancel() {
    for (auto& c : contexts_) c->TryCancel();
  }

  // Non-streaming: reads every call to its end, in order. The first failing call's status (the
  // others are cancelled by the destructor), or OK with one result per choice.
  grpc::Status Collect(std::vector<ChoiceResult>* results) {
    results->assign(readers_.size(), ChoiceResult{});
    for (size_t i = 0; i < readers_.size(); ++i) {
      moe::v1::GenerateResponse m;
      while (readers_[i]->Read(&m)) (*results)[i].Add(m);
      grpc::Status status = readers_[i]->Finish();
      if (!status.ok()) {
        // Finish the rest before the contexts go away.
        Cancel();
        for (size_t j = i + 1; j < readers_.size(); ++j) {
          while (readers_[j]->Read(&m)) {
          }
          readers_[j]->Finish();
        }
        return status;
      }
    }
    return grpc::Status::OK;
  }

  // Streaming: one thread per call reads its messages into the event queue (so the HTTP side can
  // notice a gone client while a call waits for a token).
  void StartReaders() {
    for (size_t i = 0; i < readers_.size(); ++i) {
      threads_.emplace_back([this, i] {
        moe::v1::GenerateResponse m;
        while (readers_[i]->Read(&m)) {
          absl::MutexLock lock(&mu_);
          events_.push_back({static_cast<int>(i), m, grpc::Status::OK});
        }
        grpc::Status status = readers_[i]->Finish();
        absl::MutexLock lock(&mu_);
        events_.push_back({static_cast<int>(i), std::nullopt, status});
      });
    }
  }

  // The next event, or nullopt after `timeout` without one.
  std::optional<Event> Next(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto has_event = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !events_.empty(); };
    if (!mu_.AwaitWithTimeout(absl::Condition(&has_event), timeout)) return std::nullopt;
    Event e = std::move(events_.front());
    events_.pop_front();
    return e;
  }
  // Puts an event back at the front (the handler peeks before it commits to streaming).
  void PushFront(std::vector<Event> events) {
    absl::MutexLock lock(&mu_);
    for (auto it = events.rbegin(); it != events.rend(); ++it) events_.push_front(std::move(*it));
  }

  size_t size() const { return readers_.size(); }

 private:
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts_;
  std::vector<std::unique_ptr<grpc::ClientReader<moe::v1::GenerateResponse>>> readers_;
  std::vector<std::thread> threads_;
  absl::Mutex mu_;
  std::deque<Event> events_ ABSL_GUARDED_BY(mu_);
};

// How often a stream with nothing to send probes its connection (an SSE comment line), so that a
// client gone while a call waits (queued, or a slow step) is noticed and the call cancelled.
constexpr absl::Duration kProbeInterval = absl::Seconds(1);

// How long a streamed request waits for its first messages before it commits to the SSE stream.
constexpr absl::Duration kFirstMessageWait = absl::Seconds(2);

// Per-choice state of a stream.
struct ChoiceProgress {
  bool started = false;  // chat: the role chunk was sent
  int num_tool_calls = 0;
  size_t text_sent = 0;
  int prompt_tokens = 0;
  int completion_tokens = 0;
};

}  // namespace

HttpServer::HttpServer(std::shared_ptr<grpc::Channel> channel, HttpServerOptions options)
    : channel_(std::move(channel)),
      stub_(moe::v1::Generation::NewStub(channel_)),
      options_(std::move(options)),
      server_(options_.tls_cert_file.empty()
                  ? std::make_unique<httplib::Server>()
                  : std::make_unique<httplib::SSLServer>(options_.tls_cert_file.c_str(),
                                                         options_.tls_key_file.c_str())) {}

HttpServer::~HttpServer() {
  Stop();
}

void HttpServer::Stop() {
  if (server_ == nullptr) return;
  // httplib's stop() does nothing until the accept loop has marked itself running (and asserts if
  // called twice), so a Stop right after Start, before the listen thread got there, would leave the
  // loop running forever: wait for it to run (or to have returned), then stop it once.
  while (thread_.joinable() && !listen_done_.load() && !server_->is_running()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!listen_done_.load()) server_->stop();
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(std::shared_ptr<grpc::Channel> channel,
                                                              HttpServerOptions options) {
  const std::string listen = options.listen;
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || colon == 0 || !absl::SimpleAtoi(listen.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("http listen address \"", listen.substr(0, 256), "\" is not HOST:PORT"));
  }
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (options.num_threads < 2) return absl::InvalidArgumentError("http server: num_threads must be >= 2");

  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("http server: TLS needs both a certificate and a key");
  }
  std::unique_ptr<HttpServer> server(new HttpServer(std::move(channel), std::move(options)));
  if (!server->server_->is_valid()) {
    return absl::InvalidArgumentError(absl::StrCat("http server: cannot load the TLS certificate ",
                                                   server->options_.tls_cert_file, " and key ",
                                                   server->options_.tls_key_file));
  }
  httplib::Server& s = *server->server_;
  const int threads = server->options_.num_threads;
  s.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  auto seconds = [](absl::Duration d) { return std::chrono::microseconds(absl::ToInt64Microseconds(d)); };
  s.set_read_timeout(seconds(server->options_.read_timeout));
  s.set_write_timeout(seconds(server->options_.write_timeout));
  s.set_keep_alive_timeout(static_cast<time_t>(absl::ToInt64Seconds(server->options_.keep_alive_timeout)));
  s.set_keep_alive_max_count(1000);
  s.set_payload_max_length(server->options_.max_body_bytes);
  server->Register();
  // httplib's default socket options add SO_REUSEPORT (two servers could share the port); keep only
  // SO_REUSEADDR, and note the listening socket for the backlog below.
  int listen_fd = -1;
  s.set_socket_options([&listen_fd](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_fd = sock;
  });

  if (port == 0) {
    port = s.bind_to_any_port(host);
    if (port < 0) return absl::UnavailableError(absl::StrCat("http server: cannot bind ", listen));
  } else if (!s.bind_to_port(host, port)) {
    return absl::UnavailableError(absl::StrCat("http server: cannot bind ", listen));
  }
  // httplib listens with a backlog of 5: a burst of clients (64 streams opened at once) overflows it
  // and the kernel resets the connections it cannot queue. Listening again raises the backlog.
  if (listen_fd < 0 || ::listen(listen_fd, SOMAXCONN) != 0) {
    return absl::InternalError(absl::StrCat("http server: cannot set the listen backlog of ", listen));
  }
  server->port_ = port;
  server->thread_ = std::thread([srv = &s, done = &server->listen_done_] {
    srv->listen_after_bind();
    done->store(true);
  });
  return server;
}

void HttpServer::Register() {
  httplib::Server& s = *server_;
  const size_t max_body = options_.max_body_bytes;
  // Errors httplib itself produces (413, 404, 400 of a bad request line): the same error object.
  s.set_error_handler(
      httplib::Server::HandlerWithResponse([max_body](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        ApiError e;
        e.http_status = res.status;
        switch (res.status) {
          case 413:
            e.message = absl::StrCat("the request body is larger than ", max_body, " bytes");
            e.code = "request_too_large";
            break;
          case 404:
            e.message = absl::StrCat("no route for ", req.method, " ", req.path.substr(0, 256));
            e.type = "not_found_error";
            break;
          default:
            e.message = absl::StrCat("the HTTP request was refused (", res.status, ")");
            if (res.status >= 500) e.type = "server_error";
            break;
        }
        res.set_content(RenderError(e), kJson);
        return httplib::Server::HandlerResponse::Handled;
      }));
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    SendError(res, ApiError{.http_status = 500, .message = "internal error", .type = "server_error"});
  });

  s.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    const bool ready = options_.ready();
    res.status = ready ? 200 : 503;
    res.set_content(ready ? R"({"status":"ok"})" : R"({"status":"not ready"})", kJson);
  });

  s.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    const std::string authorization = req.get_header_value("Authorization");
    if (!authorization.empty()) context.AddMetadata("authorization", authorization);
    moe::v1::ModelInfo info;
    grpc::Status status = stub_->GetModelInfo(&context, {}, &info);
    if (!status.ok()) return SendError(res, FromGrpcStatus(status));
    res.set_content(RenderModels(info, NowSeconds()), kJson);
  });

  auto completions = [this](Endpoint endpoint) {
    return [this, endpoint](const httplib::Request& req, httplib::Response& res) {
      auto request = std::make_shared<ParsedRequest>();
      if (std::optional<ApiError> error = ParseRequest(endpoint, req.body, request.get())) {
        return SendError(res, *error);
      }
      auto calls =
          std::make_shared<ChoiceCalls>(stub_.get(), *request, req.get_header_value("Authorization"));
      const std::string id = NewResponseId(endpoint);
      const int64_t created = NowSeconds();
      // The served model's name: what the client asked for, or the router's when it asked for none.
      const std::string model = request->model.empty() ? options_.model_name : request->model;

      if (!request->stream) {
        std::vector<ChoiceResult> results;
        grpc::Status status = calls->Collect(&results);
        if (!status.ok()) return SendError(res, FromGrpcStatus(status));
        res.set_content(RenderResponse(*request, results, id, created, model, options_.token_text), kJson);
        return;
      }

      // Streaming. A call refused at once (bad value, full queue, no key) is an HTTP error; so the
      // stream starts when every choice has its first message, or after kFirstMessageWait (a queued
      // or slow request), from when on errors come as an SSE event and a gone client is noticed.
      calls->StartReaders();
      std::vector<ChoiceCalls::Event> first;
      std::vector<bool> seen(calls->size(), false);
      size_t num_seen = 0;
      const absl::Time start_by = absl::Now() + kFirstMessageWait;
      while (num_seen < calls->size()) {
        const absl::Duration left = start_by - absl::Now();
        if (left <= absl::ZeroDuration()) break;
        std::optional<ChoiceCalls::Event> e = calls->Next(left);
        if (!e) break;
        if (!e->message && !e->status.ok()) return SendError(res, FromGrpcStatus(e->status));
        if (!seen[e->index]) {
          seen[e->index] = true;
          ++num_seen;
        }
        first.push_back(std::move(*e));
      }
      calls->PushFront(std::move(first));
      auto context = std::make_shared<StreamContext>(
          StreamContext{request.get(), id, created, model, options_.token_text});
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider(
          "text/event-stream",
          [request, calls, context](size_t, httplib::DataSink& sink) {
            const bool chat = request->endpoint == Endpoint::kChatCompletions;
            std::vector<ChoiceProgress> progress(calls->size());
            size_t num_ended = 0;
            auto write = [&sink, &calls](const std::string& data) {
              if (data.empty() || sink.write(data.data(), data.size())) return true;
              calls->Cancel();  // the client is gone: free the sequences now
              return false;
            };
            while (num_ended < calls->size()) {
              std::optional<ChoiceCalls::Event> e = calls->Next(kProbeInterval);
              if (!e) {
                if (!write(": keep-alive\n\n")) return false;
                continue;
              }
              ChoiceProgress& p = progress[e->index];
              if (!e->message) {
                ++num_ended;
                if (!e->status.ok()) {
                  calls->Cancel();
                  write(absl::StrCat("data: ", RenderError(FromGrpcStatus(e->status)), "\n\n"));
                  write(std::string(kDoneEvent));
                  sink.done();
                  return true;
                }
                continue;
              }
              const moe::v1::GenerateResponse& m = *e->message;
              if (chat && !p.started) {
                p.started = true;
                if (!write(RenderRoleChunk(*context, e->index))) return false;
              }
              if (!write(RenderChunk(*context, e->index, m, p.num_tool_calls, p.num_tool_calls > 0,
                                     p.text_sent))) {
                return false;
              }
              p.num_tool_calls += m.tool_calls_size();
              p.text_sent += m.reasoning_text().size() + m.text().size();
              if (m.finished()) {
                p.prompt_tokens = m.usage().prompt_tokens();
                p.completion_tokens = m.usage().completion_tokens();
              }
            }
            if (request->include_usage) {
              int prompt_tokens = 0, completion_tokens = 0;
              for (const ChoiceProgress& p : progress) {
                prompt_tokens = p.prompt_tokens;
                completion_tokens += p.completion_tokens;
              }
              if (!write(RenderUsageChunk(*context, prompt_tokens, completion_tokens))) return false;
            }
            if (!write(std::string(kDoneEvent))) return false;
            sink.done();
            return true;
          },
          [calls](bool /*success*/) { calls->Cancel(); });
    };
  };
  s.Post("/v1/chat/completions", completions(Endpoint::kChatCompletions));
  s.Post("/v1/completions", completions(Endpoint::kCompletions));
}

}  // namespace moe::router::openai
