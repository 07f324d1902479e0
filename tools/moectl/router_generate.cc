#include "tools/moectl/router_generate.h"

#include <chrono>
#include <iostream>

#include "grpcpp/grpcpp.h"
#include "moe/v1/generate.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tools/moectl/commands.h"

namespace moe::moectl {
namespace {

const char* FinishReasonName(moe::v1::FinishReason reason) {
  switch (reason) {
    case moe::v1::FINISH_REASON_STOP:
      return "stop";
    case moe::v1::FINISH_REASON_LENGTH:
      return "length";
    case moe::v1::FINISH_REASON_STOP_SEQUENCE:
      return "stop_sequence";
    case moe::v1::FINISH_REASON_ABORT:
      return "abort";
    case moe::v1::FINISH_REASON_ERROR:
      return "error";
    default:
      return "unspecified";
  }
}

}  // namespace

void GenerateViaRouter(const RouterGenerateOptions& o) {
  auto channel = grpc::CreateChannel(o.router, grpc::InsecureChannelCredentials());
  auto stub = moe::v1::Generation::NewStub(channel);
  moe::v1::GenerateRequest request;
  if (o.chat) {
    auto* chat = request.mutable_chat();
    if (!o.system.empty()) {
      auto* m = chat->add_messages();
      m->set_role("system");
      m->set_content(o.system);
    }
    auto* m = chat->add_messages();
    m->set_role("user");
    m->set_content(o.prompt);
    if (o.thinking) chat->set_enable_thinking(*o.thinking);
  } else {
    request.set_text(o.prompt);
  }
  auto* s = request.mutable_sampling();
  if (o.temperature) s->set_temperature(static_cast<float>(*o.temperature));
  if (o.top_p) s->set_top_p(static_cast<float>(*o.top_p));
  if (o.top_k) s->set_top_k(static_cast<int32_t>(*o.top_k));
  if (o.min_p) s->set_min_p(static_cast<float>(*o.min_p));
  if (o.repetition_penalty) s->set_repetition_penalty(static_cast<float>(*o.repetition_penalty));
  if (o.seed) s->set_seed(*o.seed);
  s->set_max_new_tokens(static_cast<int32_t>(o.max_tokens));
  s->set_min_new_tokens(static_cast<int32_t>(o.min_tokens));
  s->set_ignore_eos(o.ignore_eos);
  request.set_logprobs(o.logprobs);

  grpc::ClientContext ctx;
  if (o.timeout_s > 0) {
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(static_cast<int64_t>(o.timeout_s * 1000)));
  }
  auto reader = stub->Generate(&ctx, request);
  moe::v1::GenerateResponse response;
  moe::v1::GenerateResponse last;
  while (reader->Read(&response)) {
    if (o.json) {
      for (int i = 0; i < response.tokens_size(); ++i) {
        const auto& t = response.tokens(i);
        const bool last_token = i + 1 == response.tokens_size();
        nlohmann::ordered_json line{{"id", t.token_id()},
                                    {"text", last_token ? response.text() : std::string()},
                                    {"logprob", t.logprob()}};
        if (last_token && !response.reasoning_text().empty())
          line["reasoning_text"] = response.reasoning_text();
        if (t.top_logprobs_size() > 0) {
          nlohmann::ordered_json top = nlohmann::ordered_json::array();
          for (const auto& l : t.top_logprobs())
            top.push_back({{"id", l.token_id()}, {"logprob", l.logprob()}});
          line["top_logprobs"] = top;
        }
        std::cout << line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
      }
    } else {
      std::cout << response.reasoning_text() << response.text() << std::flush;
    }
    if (response.finished()) last = response;
  }
  const grpc::Status status = reader->Finish();
  if (!status.ok()) {
    if (!o.json) std::cout << std::endl;
    Fail("generate",
         std::string("router: ") + std::to_string(status.error_code()) + " " + status.error_message());
  }
  if (o.json) {
    nlohmann::ordered_json done{
        {"finish_reason", FinishReasonName(last.finish_reason())},
        {"usage",
         {{"prompt_tokens", last.usage().prompt_tokens()},
          {"completion_tokens", last.usage().completion_tokens()}}},
        {"timings",
         {{"queue_seconds", last.timings().queue_seconds()},
          {"time_to_first_token_seconds", last.timings().time_to_first_token_seconds()},
          {"total_seconds", last.timings().total_seconds()}}}};
    if (!last.matched_stop().empty()) done["matched_stop"] = last.matched_stop();
    std::cout << done.dump() << std::endl;
  } else {
    std::cout << std::endl;
  }
}

}  // namespace moe::moectl
