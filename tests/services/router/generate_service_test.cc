// The router's services in-process against a fake attention worker (an in-process gRPC
// AttentionWorker on 127.0.0.1 port 0 that emits scripted tokens).
#include "services/router/generate_service.h"

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <fstream>
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/rpc/server.h"
#include "gtest/gtest.h"
#include "moe/v1/attention.grpc.pb.h"
#include "prometheus/text_serializer.h"
#include "services/router/api_keys.h"
#include "tests/services/router/fake_attention_worker.h"
#include "tests/util/test_models.h"

namespace moe::router {
namespace {

using fakes::FakeWorker;
using fakes::kFail;
using fakes::kNormal;
using fakes::kOpen;
using fakes::kStall;
using fakes::WaitFor;

class GenerateServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = *ServedModel::Load(testing::TestModelDir("tiny", "bf16"), "tiny");
    worker_.script = *model_->tokenizer->Encode("Hello world peace and more");
    worker_server_ = *rpc::GrpcServer::Start("127.0.0.1:0", {&worker_});
    metrics_ = std::make_unique<RouterMetrics>(registry_);
    AttentionWorkerPoolOptions options;
    options.max_queued_requests = 1;
    options.poll_interval = absl::Milliseconds(20);
    worker_pool_ = std::make_unique<AttentionWorkerPool>(
        std::vector<std::string>{"127.0.0.1:" + std::to_string(worker_server_->port())},
        std::vector<std::string>{}, options, metrics_.get());
    service_ = std::make_unique<GenerateService>(model_.get(), worker_pool_.get(), metrics_.get());
    router_ = *rpc::GrpcServer::Start("127.0.0.1:0", {service_.get()});
    absl::Notification ready;
    worker_pool_->Start([&ready, this](bool r) {
      if (r && !ready.HasBeenNotified()) ready.Notify();
    });
    ASSERT_TRUE(ready.WaitForNotificationWithTimeout(absl::Seconds(10)));
    stub_ = moe::v1::Generation::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(router_->port()),
                                                             grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    router_->Shutdown(absl::Seconds(1));
    worker_pool_->Stop();
    worker_server_->Shutdown(absl::Seconds(1));
  }

  struct Result {
    grpc::Status status;
    std::vector<moe::v1::GenerateResponse> messages;
    std::string text;
  };
  Result Generate(const moe::v1::GenerateRequest& request, absl::Duration timeout = absl::Seconds(10),
                  grpc::ClientContext* context = nullptr) {
    grpc::ClientContext own;
    if (context == nullptr) context = &own;
    context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    auto reader = stub_->Generate(context, request);
    Result r;
    moe::v1::GenerateResponse m;
    while (reader->Read(&m)) {
      r.text += m.text();
      r.messages.push_back(m);
    }
    r.status = reader->Finish();
    return r;
  }
  static moe::v1::GenerateRequest Request(int32_t mode) {
    moe::v1::GenerateRequest r;
    r.mutable_token_ids()->add_ids(mode);
    r.mutable_sampling()->set_max_new_tokens(16);
    return r;
  }

  std::unique_ptr<ServedModel> model_;
  FakeWorker worker_;
  std::unique_ptr<rpc::GrpcServer> worker_server_;
  prometheus::Registry registry_;
  std::unique_ptr<RouterMetrics> metrics_;
  std::unique_ptr<AttentionWorkerPool> worker_pool_;
  std::unique_ptr<GenerateService> service_;
  std::unique_ptr<rpc::GrpcServer> router_;
  std::unique_ptr<moe::v1::Generation::Stub> stub_;
};

TEST_F(GenerateServiceTest, StreamsTextAndFinalMessage) {
  Result r = Generate(Request(kNormal));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.text, "Hello world peace and more");
  ASSERT_FALSE(r.messages.empty());
  const auto& last = r.messages.back();
  EXPECT_TRUE(last.finished());
  EXPECT_EQ(last.finish_reason(), moe::v1::FINISH_REASON_STOP);
  EXPECT_EQ(last.usage().prompt_tokens(), 1);
  EXPECT_EQ(last.usage().completion_tokens(), static_cast<int>(worker_.script.size()));
  EXPECT_GE(last.timings().total_seconds(), last.timings().time_to_first_token_seconds());
}

TEST_F(GenerateServiceTest, StopStringAcrossTokensEndsStreamAndCancelsWorker) {
  // The worker keeps its stream open after the script, so only the router's cancel ends it.
  moe::v1::GenerateRequest req = Request(kOpen);
  req.mutable_sampling()->add_stop("d pea");  // spans " world" and " peace"
  Result r = Generate(req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.text, "Hello worl");
  EXPECT_EQ(r.messages.back().finish_reason(), moe::v1::FINISH_REASON_STOP_SEQUENCE);
  EXPECT_EQ(r.messages.back().matched_stop(), "d pea");
  EXPECT_TRUE(WaitFor([this] { return worker_.cancels_seen.load() > 0; }));
  EXPECT_EQ(worker_.cancels_seen.load(), 1);
}

TEST_F(GenerateServiceTest, ClientCancelReachesWorkerAndRouterKeepsServing) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  auto reader = stub_->Generate(&context, Request(kStall));
  moe::v1::GenerateResponse m;
  ASSERT_TRUE(reader->Read(&m));
  ASSERT_TRUE(worker_.stalled.WaitForNotificationWithTimeout(absl::Seconds(10)));
  context.TryCancel();
  while (reader->Read(&m)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitFor([this] { return worker_.cancels_seen.load() > 0; }));
  EXPECT_EQ(worker_.cancels_seen.load(), 1);
  EXPECT_TRUE(Generate(Request(kNormal)).status.ok());
}

TEST_F(GenerateServiceTest, DeadlineIsPropagatedToTheWorker) {
  Result r = Generate(Request(kStall), absl::Milliseconds(500));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(WaitFor([this] { return worker_.cancels_seen.load() > 0; }));
  EXPECT_EQ(worker_.cancels_seen.load(), 1);
  EXPECT_TRUE(Generate(Request(kNormal)).status.ok());
}

// The client learns that its request failed and may be retried, but nothing of the inside: no
// worker address, no detail of the worker's error (the router logs those).
TEST_F(GenerateServiceTest, WorkerUnavailableEndsStreamWithUnavailableAndNoInternals) {
  moe::v1::GenerateRequest request = Request(kFail);
  request.set_request_id("client-7");
  Result r = Generate(request);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(r.status.error_message(), "request client-7 failed on an attention worker; it is safe to retry");
  EXPECT_EQ(r.status.error_message().find("expert worker lost"), std::string::npos);
  EXPECT_EQ(r.status.error_message().find("127.0.0.1"), std::string::npos);
  EXPECT_TRUE(Generate(Request(kNormal)).status.ok());
}

TEST_F(GenerateServiceTest, FullQueueIsResourceExhaustedAndQueuedRequestTimesOut) {
  worker_.free_blocks = 0;  // nothing can be placed: requests wait in the queue (bound 1)
  // Wait until the router has seen the new load. Polls of one worker are sequential (the next is
  // issued after the previous answer is applied), and an answer counted after the store may have
  // read the old value; so the second answer after it reads 0, and the third is issued only once
  // the second has been applied.
  const int served = worker_.loads_served.load();
  ASSERT_TRUE(WaitFor([&] { return worker_.loads_served.load() >= served + 3; }));
  grpc::ClientContext first_context;
  first_context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  auto first = stub_->Generate(&first_context, Request(kNormal));
  ASSERT_TRUE(WaitFor([this] { return worker_pool_->queued() > 0; }));
  ASSERT_EQ(worker_pool_->queued(), 1u);
  Result second = Generate(Request(kNormal));
  EXPECT_EQ(second.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  moe::v1::GenerateResponse m;
  EXPECT_FALSE(first->Read(&m));
  EXPECT_EQ(first->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  worker_.free_blocks = 1000;
  // The expired request may still hold the queue's one place until the scheduler drops it; a
  // request queued after that waits there until a poll shows the free blocks.
  ASSERT_TRUE(WaitFor([this] { return worker_pool_->queued() == 0; }));
  EXPECT_TRUE(Generate(Request(kNormal)).status.ok());
}

TEST_F(GenerateServiceTest, BadRequestIsInvalidArgumentNamingField) {
  moe::v1::GenerateRequest req = Request(kNormal);
  req.set_logprobs(21);
  Result r = Generate(req);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(r.status.error_message().rfind("logprobs", 0), 0u) << r.status.error_message();
}

// A chat request that offers tools, answered with the real Qwen3 token ids of a Hermes-style tool
// call: the client gets the call in tool_calls (once, with the message of </tool_call>) and only
// the content as text. The same tokens without tools come back as text.
TEST_F(GenerateServiceTest, ToolCallTokensBecomeToolCallsWhenTheRequestHasTools) {
  const std::string answer =
      "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", "
      "\"unit\": \"c\"}}\n</tool_call><|im_end|>";
  worker_.script = *model_->tokenizer->Encode(answer);
  auto count = [&](int32_t id) { return std::count(worker_.script.begin(), worker_.script.end(), id); };
  ASSERT_EQ(count(151657), 1);  // <tool_call>
  ASSERT_EQ(count(151658), 1);  // </tool_call>
  moe::v1::GenerateRequest req;
  auto* m = req.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("Weather in Paris?");
  req.mutable_chat()->set_enable_thinking(false);
  req.mutable_chat()->add_tools(
      R"({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}})");
  req.mutable_sampling()->set_max_new_tokens(64);
  Result r = Generate(req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.text, "Let me look.\n");
  std::vector<moe::v1::ToolCall> calls;
  for (const moe::v1::GenerateResponse& msg : r.messages) {
    EXPECT_EQ(msg.text().find("tool_call"), std::string::npos) << msg.text();
    for (const moe::v1::ToolCall& c : msg.tool_calls()) {
      calls.push_back(c);
      // Sent with the token that closed it.
      ASSERT_GT(msg.tokens_size(), 0);
      EXPECT_EQ(msg.tokens(msg.tokens_size() - 1).token_id(), 151658);
    }
  }
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].name(), "get_weather");
  EXPECT_EQ(calls[0].arguments(), R"({"city":"Paris","unit":"c"})");
  EXPECT_EQ(calls[0].id().size(), 29u);
  EXPECT_EQ(calls[0].id().rfind("call_", 0), 0u);
  EXPECT_EQ(r.messages.back().finish_reason(), moe::v1::FINISH_REASON_STOP);

  req.mutable_chat()->clear_tools();
  Result plain = Generate(req);
  ASSERT_TRUE(plain.status.ok()) << plain.status.error_message();
  EXPECT_EQ(plain.text, model_->tokenizer->Decode(worker_.script, /*skip_special_tokens=*/true));
  for (const moe::v1::GenerateResponse& msg : plain.messages) EXPECT_EQ(msg.tool_calls_size(), 0);
}

TEST_F(GenerateServiceTest, ModelInfoAndTokenize) {
  grpc::ClientContext c1;
  moe::v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&c1, {}, &info).ok());
  EXPECT_EQ(info.model(), "tiny");
  EXPECT_EQ(info.vocab_size(), model_->config.vocab_size);
  EXPECT_EQ(info.num_attention_workers(), 1);
  EXPECT_EQ(info.num_ready_attention_workers(), 1);  // the fixture waited for it
  grpc::ClientContext c2;
  moe::v1::TokenizeRequest tr;
  tr.set_text("Hello world peace and more");
  moe::v1::TokenizeResponse ids;
  ASSERT_TRUE(stub_->Tokenize(&c2, tr, &ids).ok());
  EXPECT_EQ(std::vector<int32_t>(ids.ids().begin(), ids.ids().end()), worker_.script);
}

TEST_F(GenerateServiceTest, WorkersSeeTheRoutersUnguessableIdNeverTheClients) {
  moe::v1::GenerateRequest req = Request(kNormal);
  req.set_request_id("client-chosen");
  Result r = Generate(req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.messages.back().request_id(), "client-chosen");  // echoed to its client
  Result unnamed = Generate(Request(kNormal));
  ASSERT_TRUE(unnamed.status.ok());
  absl::MutexLock lock(&worker_.ids_mu);
  ASSERT_EQ(worker_.request_ids.size(), 2u);
  for (const std::string& id : worker_.request_ids) {
    EXPECT_EQ(id.find("client-chosen"), std::string::npos);
    EXPECT_EQ(id.size(), 4u + 32u) << id;  // "req-" + 128 random bits in hex
  }
  EXPECT_NE(worker_.request_ids[0], worker_.request_ids[1]);
  EXPECT_EQ(unnamed.messages.back().request_id(), worker_.request_ids[1]);
}

TEST_F(GenerateServiceTest, ApiKeysAreRequiredOnEveryCallAndCountedPerKey) {
  const std::string path = testing::MakeTempDir("router_keys") + "/keys";
  std::ofstream(path) << "team-a sk-0123456789abcdef0123\n";
  auto keys = ApiKeyStore::Load(path);
  ASSERT_TRUE(keys.ok()) << keys.status();
  service_->RequireApiKeys(keys->get());

  for (const char* header : {"", "Bearer sk-wrong-wrong-wrong-wrong"}) {
    grpc::ClientContext context;
    if (*header != '\0') context.AddMetadata("authorization", header);
    Result r = Generate(Request(kNormal), absl::Seconds(10), &context);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << header;
    EXPECT_TRUE(r.messages.empty());
    grpc::ClientContext c2;
    if (*header != '\0') c2.AddMetadata("authorization", header);
    moe::v1::ModelInfo info;
    EXPECT_EQ(stub_->GetModelInfo(&c2, {}, &info).error_code(), grpc::StatusCode::UNAUTHENTICATED);
    grpc::ClientContext c3;
    if (*header != '\0') c3.AddMetadata("authorization", header);
    moe::v1::TokenizeRequest tr;
    tr.set_text("hi");
    moe::v1::TokenizeResponse ids;
    EXPECT_EQ(stub_->Tokenize(&c3, tr, &ids).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    absl::MutexLock lock(&worker_.ids_mu);
    EXPECT_TRUE(worker_.request_ids.empty()) << "an unauthenticated request reached a worker";
  }
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer sk-0123456789abcdef0123");
  Result r = Generate(Request(kNormal), absl::Seconds(10), &context);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.text, "Hello world peace and more");

  const std::string exposition = prometheus::TextSerializer().Serialize(registry_.Collect());
  EXPECT_NE(exposition.find("moe_router_api_key_requests_total{key=\"team-a\"} 1"), std::string::npos)
      << exposition;
  EXPECT_NE(exposition.find("moe_router_rejections_total{reason=\"unauthenticated\"} 6"), std::string::npos)
      << exposition;
  EXPECT_EQ(exposition.find("sk-0123456789abcdef0123"), std::string::npos);
}

}  // namespace
}  // namespace moe::router
