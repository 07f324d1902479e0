// The OpenAI HTTP API against the router's real GenerateService (in-process) and a fake attention
// worker: requests go HTTP -> HttpServer -> in-process channel -> GenerateService -> worker.
#include "services/router/openai/http_server.h"

#include <atomic>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "common/rpc/server.h"
#include "common/rpc/tls_certificates.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "services/router/generate_service.h"
#include "tests/services/router/fake_attention_worker.h"
#include "tests/util/test_models.h"

namespace moe::router::openai {
namespace {

using json = nlohmann::json;
using fakes::FakeWorker;
using fakes::WaitFor;

constexpr char kKey[] = "Bearer sk-test-0123456789abcdef";  // the router checks it (ApiKeyStore)

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = *ServedModel::Load(moe::testing::TestModelDir("tiny", "bf16"), "tiny");
    worker_.script = *model_->tokenizer->Encode("Hello world peace and more");
    worker_server_ = *rpc::GrpcServer::Start("127.0.0.1:0", {&worker_});
    metrics_ = std::make_unique<RouterMetrics>(registry_);
    AttentionWorkerPoolOptions options;
    options.max_queued_requests = 256;
    options.poll_interval = absl::Milliseconds(20);
    worker_pool_ = std::make_unique<AttentionWorkerPool>(
        std::vector<std::string>{"127.0.0.1:" + std::to_string(worker_server_->port())},
        std::vector<std::string>{}, options, metrics_.get());
    service_ = std::make_unique<GenerateService>(model_.get(), worker_pool_.get(), metrics_.get());
    const std::string keys = moe::testing::MakeTempDir("http_keys") + "/keys";
    std::ofstream(keys) << "test sk-test-0123456789abcdef\n";
    api_keys_ = *ApiKeyStore::Load(keys);
    service_->RequireApiKeys(api_keys_.get());
    router_ = *rpc::GrpcServer::Start("127.0.0.1:0", {service_.get()});
    absl::Notification ready;
    worker_pool_->Start([&ready, this](bool r) {
      ready_ = r;
      if (r && !ready.HasBeenNotified()) ready.Notify();
    });
    ASSERT_TRUE(ready.WaitForNotificationWithTimeout(absl::Seconds(10)));
    const ServedModel* served = model_.get();
    auto http =
        HttpServer::Start(router_->InProcessChannel(), {.listen = "127.0.0.1:0",
                                                        .num_threads = 96,
                                                        .model_name = "tiny",
                                                        .ready = [this] { return ready_.load(); },
                                                        .token_text =
                                                            [served](int32_t id) {
                                                              return served->tokenizer->Decode({&id, 1});
                                                            }});
    ASSERT_TRUE(http.ok()) << http.status();
    http_ = *std::move(http);
  }
  void TearDown() override {
    router_->Shutdown(absl::Seconds(1));
    if (http_) http_->Stop();
    worker_pool_->Stop();
    worker_server_->Shutdown(absl::Seconds(1));
  }

  std::unique_ptr<httplib::Client> Client() {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", http_->port());
    c->set_read_timeout(std::chrono::seconds(20));
    c->set_write_timeout(std::chrono::seconds(20));
    return c;
  }
  httplib::Result Post(const std::string& path, const std::string& body, bool with_key = true) {
    httplib::Headers headers;
    if (with_key) headers.emplace("Authorization", kKey);
    return Client()->Post(path, headers, body, "application/json");
  }

  // A streamed POST: the SSE body, split into the JSON of its data events ("[DONE]" kept as a string).
  struct Stream {
    int status = 0;
    std::string body;
    std::vector<json> events;
    bool done = false;
  };
  Stream PostStream(const std::string& path, const std::string& body) {
    httplib::Request req;
    req.method = "POST";
    req.path = path;
    req.headers.emplace("Authorization", kKey);
    req.headers.emplace("Content-Type", "application/json");
    req.body = body;
    Stream s;
    req.content_receiver = [&s](const char* data, size_t n, uint64_t, uint64_t) {
      s.body.append(data, n);
      return true;
    };
    httplib::Result r = Client()->send(req);
    if (!r) {
      s.body = "no response: " + httplib::to_string(r.error()) + " after " + s.body;
      return s;
    }
    s.status = r->status;
    if (s.status != 200) return s;
    for (absl::string_view event : absl::StrSplit(s.body, "\n\n", absl::SkipEmpty())) {
      if (!absl::StartsWith(event, "data: ")) continue;
      event.remove_prefix(6);
      if (event == "[DONE]") {
        s.done = true;
      } else {
        s.events.push_back(json::parse(event));
      }
    }
    return s;
  }

  static void ExpectError(const httplib::Result& r, int status, const std::string& param,
                          const std::string& message_part) {
    ASSERT_TRUE(r) << "no response";
    EXPECT_EQ(r->status, status) << r->body;
    json body = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(body.is_object()) << r->body;
    ASSERT_TRUE(body["error"].is_object()) << r->body;
    EXPECT_NE(body["error"]["message"].get<std::string>().find(message_part), std::string::npos) << r->body;
    EXPECT_TRUE(body["error"]["type"].is_string());
    if (param.empty()) {
      EXPECT_TRUE(body["error"]["param"].is_null()) << r->body;
    } else {
      EXPECT_EQ(body["error"]["param"], param) << r->body;
    }
    EXPECT_TRUE(body["error"].contains("code"));
  }

  std::unique_ptr<ServedModel> model_;
  FakeWorker worker_;
  std::unique_ptr<rpc::GrpcServer> worker_server_;
  prometheus::Registry registry_;
  std::unique_ptr<RouterMetrics> metrics_;
  std::unique_ptr<AttentionWorkerPool> worker_pool_;
  std::unique_ptr<GenerateService> service_;
  std::unique_ptr<ApiKeyStore> api_keys_;
  std::unique_ptr<rpc::GrpcServer> router_;
  std::atomic<bool> ready_{false};
  std::unique_ptr<HttpServer> http_;
};

constexpr char kChat[] =
    R"({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16)";

TEST_F(HttpServerTest, ChatCompletionNonStreaming) {
  httplib::Result r = Post("/v1/chat/completions", std::string(kChat) + "}");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->get_header_value("Content-Type"), "application/json");
  json body = json::parse(r->body);
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_EQ(body["model"], "tiny");
  EXPECT_EQ(body["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(body["choices"][0]["message"]["content"], "Hello world peace and more");
  EXPECT_FALSE(body["choices"][0]["message"].contains("reasoning_content"));
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(body["usage"]["completion_tokens"], static_cast<int>(worker_.script.size()));
  EXPECT_GT(body["usage"]["prompt_tokens"].get<int>(), 1);
}

TEST_F(HttpServerTest, ReasoningIsSplitIntoReasoningContent) {
  worker_.script = *model_->tokenizer->Encode("<think>\nLet me see.\n</think>\n\nHello");
  httplib::Result r = Post("/v1/chat/completions", std::string(kChat) + "}");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json message = json::parse(r->body)["choices"][0]["message"];
  EXPECT_EQ(message["reasoning_content"], "\nLet me see.\n");
  EXPECT_EQ(message["content"], "\n\nHello");
}

TEST_F(HttpServerTest, SeveralChoicesAreIndexed) {
  httplib::Result r = Post("/v1/chat/completions", std::string(kChat) + R"(, "n": 3, "seed": 5})");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json body = json::parse(r->body);
  ASSERT_EQ(body["choices"].size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(body["choices"][i]["index"], i);
    EXPECT_EQ(body["choices"][i]["message"]["content"], "Hello world peace and more");
  }
  EXPECT_EQ(body["usage"]["completion_tokens"], 3 * static_cast<int>(worker_.script.size()));
}

TEST_F(HttpServerTest, ChatCompletionStreamingWithUsage) {
  Stream s =
      PostStream("/v1/chat/completions",
                 std::string(kChat) + R"(, "stream": true, "stream_options": {"include_usage": true}})");
  ASSERT_EQ(s.status, 200) << s.body;
  ASSERT_GE(s.events.size(), 3u) << s.body;
  EXPECT_TRUE(s.done);
  EXPECT_EQ(s.events.front()["choices"][0]["delta"]["role"], "assistant");
  std::string text;
  std::string id = s.events.front()["id"];
  EXPECT_EQ(id.rfind("chatcmpl-", 0), 0u);
  json finish;
  for (const json& e : s.events) {
    EXPECT_EQ(e["id"], id);
    if (e["choices"].empty()) continue;
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    if (e["choices"][0]["delta"].contains("content")) text += e["choices"][0]["delta"]["content"];
    if (!e["choices"][0]["finish_reason"].is_null()) finish = e["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(text, "Hello world peace and more");
  EXPECT_EQ(finish, "stop");
  const json& usage = s.events.back();
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], static_cast<int>(worker_.script.size()));
  EXPECT_EQ(usage["usage"]["total_tokens"],
            usage["usage"]["completion_tokens"].get<int>() + usage["usage"]["prompt_tokens"].get<int>());
}

TEST_F(HttpServerTest, CompletionsWithTokenIdsStreamAndNot) {
  httplib::Result r = Post("/v1/completions", R"({"prompt": [1], "max_tokens": 16})");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json body = json::parse(r->body);
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["choices"][0]["text"], "Hello world peace and more");
  EXPECT_EQ(body["usage"]["prompt_tokens"], 1);

  Stream s = PostStream("/v1/completions", R"({"prompt": [1], "max_tokens": 16, "stream": true})");
  ASSERT_EQ(s.status, 200);
  std::string text;
  for (const json& e : s.events) text += e["choices"][0]["text"];
  EXPECT_EQ(text, "Hello world peace and more");
  EXPECT_TRUE(s.done);
}

TEST_F(HttpServerTest, StreamedChoicesAreIndexedAndEachIsComplete) {
  Stream s = PostStream("/v1/chat/completions", std::string(kChat) + R"(, "n": 2, "stream": true})");
  ASSERT_EQ(s.status, 200) << s.body;
  std::vector<std::string> text(2);
  std::vector<std::string> finish(2);
  for (const json& e : s.events) {
    const int i = e["choices"][0]["index"];
    ASSERT_TRUE(i == 0 || i == 1);
    text[i] += e["choices"][0]["delta"].value("content", "");
    if (!e["choices"][0]["finish_reason"].is_null()) finish[i] = e["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(text, (std::vector<std::string>{"Hello world peace and more", "Hello world peace and more"}));
  EXPECT_EQ(finish, (std::vector<std::string>{"stop", "stop"}));
  EXPECT_TRUE(s.done);
}

TEST_F(HttpServerTest, ChatLogprobsNameEachGeneratedToken) {
  httplib::Result r =
      Post("/v1/chat/completions", std::string(kChat) + R"(, "logprobs": true, "top_logprobs": 0})");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json content = json::parse(r->body)["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), worker_.script.size());
  std::string joined;
  for (const json& t : content) {
    joined += t["token"].get<std::string>();
    EXPECT_TRUE(t["logprob"].is_number());
    EXPECT_EQ(t["bytes"].size(), t["token"].get<std::string>().size());
  }
  EXPECT_EQ(joined, "Hello world peace and more");
}

TEST_F(HttpServerTest, WorkerFailureIs503WithAnErrorObject) {
  ExpectError(Post("/v1/completions", R"({"prompt": [3], "max_tokens": 16})"), 503, "", "safe to retry");
  Stream s = PostStream("/v1/completions", R"({"prompt": [3], "max_tokens": 16, "stream": true})");
  EXPECT_EQ(s.status, 503) << s.body;
}

TEST_F(HttpServerTest, MissingOrWrongKeyIs401) {
  ExpectError(Post("/v1/chat/completions", std::string(kChat) + "}", /*with_key=*/false), 401, "",
              "missing API key");
  httplib::Headers wrong = {{"Authorization", "Bearer sk-wrong-0123456789abcdef"}};
  httplib::Result r =
      Client()->Post("/v1/chat/completions", wrong, std::string(kChat) + "}", "application/json");
  ExpectError(r, 401, "", "invalid API key");
  EXPECT_EQ(r->body.find("sk-wrong"), std::string::npos) << "the key is echoed";
  ExpectError(Post("/v1/completions", R"({"prompt": "x", "stream": true})", false), 401, "", "API key");
  httplib::Result models = Client()->Get("/v1/models");
  ExpectError(models, 401, "", "API key");
}

TEST_F(HttpServerTest, ModelsAndHealth) {
  httplib::Result models = Client()->Get("/v1/models", {{"Authorization", kKey}});
  ASSERT_TRUE(models);
  ASSERT_EQ(models->status, 200) << models->body;
  EXPECT_EQ(json::parse(models->body)["data"][0]["id"], "tiny");
  httplib::Result health = Client()->Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  ready_ = false;
  health = Client()->Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 503);
}

// With the router's public certificate the HTTP API is HTTPS; a plain-HTTP client gets nothing.
TEST_F(HttpServerTest, ServesHttpsWithTheRoutersPublicCertificate) {
  auto certificates = rpc::MakeClusterCertificates(moe::testing::MakeTempDir("http_tls"), "public CA");
  ASSERT_TRUE(certificates.ok()) << certificates.status();
  const ServedModel* served = model_.get();
  auto https =
      HttpServer::Start(router_->InProcessChannel(), {.listen = "127.0.0.1:0",
                                                      .num_threads = 4,
                                                      .model_name = "tiny",
                                                      .ready = [] { return true; },
                                                      .token_text =
                                                          [served](int32_t id) {
                                                            return served->tokenizer->Decode({&id, 1});
                                                          },
                                                      .tls_cert_file = certificates->cert_file,
                                                      .tls_key_file = certificates->key_file});
  ASSERT_TRUE(https.ok()) << https.status();
  httplib::SSLClient client("127.0.0.1", (*https)->port());
  client.set_ca_cert_path(certificates->ca_file.c_str());
  client.enable_server_certificate_verification(true);
  httplib::Result health = client.Get("/health");
  ASSERT_TRUE(health) << httplib::to_string(health.error());
  EXPECT_EQ(health->status, 200);
  httplib::Result chat = client.Post("/v1/chat/completions", {{"Authorization", kKey}},
                                     std::string(kChat) + "}", "application/json");
  ASSERT_TRUE(chat);
  EXPECT_EQ(chat->status, 200) << chat->body;
  httplib::Client plain("127.0.0.1", (*https)->port());
  plain.set_read_timeout(std::chrono::seconds(5));
  httplib::Result refused = plain.Get("/health");
  EXPECT_TRUE(!refused || refused->status != 200);
  (*https)->Stop();

  auto broken =
      HttpServer::Start(router_->InProcessChannel(), {.listen = "127.0.0.1:0",
                                                      .ready = [] { return true; },
                                                      .token_text = [](int32_t) { return std::string(); },
                                                      .tls_cert_file = "/nonexistent/cert.pem",
                                                      .tls_key_file = "/nonexistent/key.pem"});
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(HttpServerTest, BadRequestsAre4xxWithAnErrorObject) {
  ExpectError(Post("/v1/chat/completions", "{\"messages\": [}"), 400, "", "not valid JSON");
  ExpectError(Post("/v1/chat/completions", std::string(kChat) + R"(, "temperature": "hot"})"), 400,
              "temperature", "must be a number");
  ExpectError(Post("/v1/chat/completions", std::string(kChat) + R"(, "bogus": 1})"), 400, "bogus",
              "unknown field");
  ExpectError(Post("/v1/completions", R"({"prompt": "x", "max_tokens": -1})"), 400, "max_tokens",
              "at least 0");
  // A value only the router's validation refuses: its INVALID_ARGUMENT, as a 400 (streamed too).
  ExpectError(Post("/v1/completions", R"({"prompt": "x", "top_p": 0})"), 400, "", "top_p");
  Stream s = PostStream("/v1/completions", R"({"prompt": "x", "top_p": 0, "stream": true})");
  EXPECT_EQ(s.status, 400) << s.body;
  ExpectError(Client()->Get("/v1/nothing"), 404, "", "no route");
}

TEST_F(HttpServerTest, TenMegabyteBodyIs413) {
  const std::string body = R"({"prompt": ")" + std::string(10 << 20, 'a') + "\"}";
  ExpectError(Post("/v1/completions", body), 413, "", "larger than 8388608 bytes");
  // The server still answers.
  httplib::Result r = Post("/v1/completions", R"({"prompt": [1], "max_tokens": 16})");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(HttpServerTest, ClientThatDisconnectsMidStreamCancelsTheWorkerCall) {
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.headers.emplace("Authorization", kKey);
  req.headers.emplace("Content-Type", "application/json");
  req.body = R"({"prompt": [2], "max_tokens": 16, "stream": true})";  // one token, then the worker stalls
  std::string received;
  req.content_receiver = [&received](const char* data, size_t n, uint64_t, uint64_t) {
    received.append(data, n);
    return received.find("Hello") == std::string::npos;  // stop (and close) after the first token
  };
  httplib::Result r = Client()->send(req);
  EXPECT_FALSE(r);  // the client cancelled
  EXPECT_NE(received.find("Hello"), std::string::npos);
  EXPECT_TRUE(worker_.stalled.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_TRUE(WaitFor([this] { return worker_.cancels_seen.load() > 0; }, absl::Seconds(20)));
  EXPECT_EQ(worker_.cancels_seen.load(), 1);
  httplib::Result after = Post("/v1/completions", R"({"prompt": [1], "max_tokens": 16})");
  ASSERT_TRUE(after);
  EXPECT_EQ(after->status, 200);
}

TEST_F(HttpServerTest, ClientThatDisconnectsWhileQueuedLeavesTheQueue) {
  worker_.free_blocks = 0;  // nothing can be placed: the request waits in the router's queue
  // As in generate_service_test: the third GetLoad answer after the store is issued after the
  // router applied one that read 0.
  const int served = worker_.loads_served.load();
  ASSERT_TRUE(WaitFor([&] { return worker_.loads_served.load() >= served + 3; }));
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.headers.emplace("Authorization", kKey);
  req.headers.emplace("Content-Type", "application/json");
  req.body = R"({"prompt": [1], "max_tokens": 16, "stream": true})";
  std::string received;
  size_t queued_then = 0;
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    received.append(data, n);
    queued_then = worker_pool_->queued();
    return false;  // the first bytes (a keep-alive comment while queued): hang up
  };
  EXPECT_FALSE(Client()->send(req));
  EXPECT_EQ(received.rfind(": keep-alive", 0), 0u) << received;
  EXPECT_EQ(queued_then, 1u);
  EXPECT_TRUE(WaitFor([this] { return worker_pool_->queued() == 0; }, absl::Seconds(20)));
  worker_.free_blocks = 1000;
  httplib::Result after = Post("/v1/completions", R"({"prompt": [1], "max_tokens": 16})");
  ASSERT_TRUE(after);
  EXPECT_EQ(after->status, 200);
}

TEST_F(HttpServerTest, SixtyFourConcurrentStreamsComplete) {
  constexpr int kStreams = 64;
  std::vector<std::thread> clients;
  std::atomic<int> completed{0};
  for (int i = 0; i < kStreams; ++i) {
    clients.emplace_back([this, &completed] {
      Stream s = PostStream("/v1/chat/completions", std::string(kChat) + R"(, "stream": true})");
      std::string text;
      for (const json& e : s.events) {
        if (!e["choices"].empty() && e["choices"][0]["delta"].contains("content")) {
          text += e["choices"][0]["delta"]["content"];
        }
      }
      if (s.status == 200 && s.done && text == "Hello world peace and more") {
        completed++;
      } else {
        ADD_FAILURE() << "status " << s.status << ": " << s.body.substr(0, 300);
      }
    });
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(completed.load(), kStreams);
}

// Resident memory of this process (router services, HTTP server and clients all live here), in KiB.
int64_t ResidentKib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (absl::StartsWith(line, "VmRSS:")) return std::stoll(line.substr(6));
  }
  return -1;
}

// 500 requests (streamed and not, some abandoned mid-stream) leave memory where it was after the
// first 100: nothing per request is kept (streams, calls, sequences, buffers).
TEST_F(HttpServerTest, ResidentMemoryIsFlatOver500Requests) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "a sanitizer's quarantine and shadow memory make RSS meaningless here";
#endif
  auto run = [this](int n) {
    for (int i = 0; i < n; ++i) {
      if (i % 2 == 0) {
        Stream s = PostStream("/v1/chat/completions", std::string(kChat) + R"(, "stream": true})");
        ASSERT_EQ(s.status, 200) << s.body.substr(0, 200);
      } else {
        httplib::Result r = Post("/v1/chat/completions", std::string(kChat) + "}");
        ASSERT_TRUE(r);
        ASSERT_EQ(r->status, 200) << r->body;
      }
    }
  };
  run(100);  // warm-up: thread pools, allocator arenas, gRPC's caches
  const int64_t before = ResidentKib();
  run(400);
  const int64_t after = ResidentKib();
  ASSERT_GT(before, 0);
  // A leak of even 8 KiB per request would add 3.2 MiB; allow 2 MiB of allocator noise.
  EXPECT_LT(after - before, 2048) << "RSS " << before << " KiB -> " << after << " KiB over 400 requests";
}

}  // namespace
}  // namespace moe::router::openai
