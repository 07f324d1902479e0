#include "tools/moectl/router_generate.h"

#include <chrono>
#include <iostream>

#include "absl/algorithm/container.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

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

absl::StatusOr<std::string> ParseRouterAddress(absl::string_view address) {
  for (absl::string_view scheme : {"unix:", "dns:", "ipv4:", "ipv6:"}) {
    if (absl::StartsWith(address, scheme)) return std::string(address);
  }
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("--router: expected HOST:PORT, e.g. 127.0.0.1:50051 (the router's default port), got '",
                     address, "': ", why));
  };
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos) return bad("no port");
  const absl::string_view host = address.substr(0, colon), port = address.substr(colon + 1);
  if (host.empty()) return bad("no host");
  if (absl::StrContains(host, ':') && !(absl::StartsWith(host, "[") && absl::EndsWith(host, "]"))) {
    return bad("put an IPv6 host in brackets, e.g. [::1]:50051");
  }
  int port_number = 0;
  if (port.empty() || !absl::c_all_of(port, absl::ascii_isdigit) || !absl::SimpleAtoi(port, &port_number) ||
      port_number < 1 || port_number > 65535) {
    return bad("the port must be a number in [1, 65535]");
  }
  return std::string(address);
}

moe::v1::GenerateRequest ToGenerateRequest(const GenerationFlags& flags) {
  moe::v1::GenerateRequest request;
  if (flags.chat) {
    auto* chat = request.mutable_chat();
    for (const tokenizer::ChatMessage& message : flags.ChatMessages()) {
      auto* m = chat->add_messages();
      m->set_role(message.role);
      m->set_content(message.content);
    }
    if (flags.thinking) chat->set_enable_thinking(*flags.thinking);
  } else {
    request.set_text(flags.prompt);
  }
  const request::SamplingOverrides& o = flags.sampling;
  auto* s = request.mutable_sampling();
  if (o.temperature) s->set_temperature(static_cast<float>(*o.temperature));
  if (o.top_p) s->set_top_p(static_cast<float>(*o.top_p));
  if (o.top_k) s->set_top_k(static_cast<int32_t>(*o.top_k));
  if (o.min_p) s->set_min_p(static_cast<float>(*o.min_p));
  if (o.repetition_penalty) s->set_repetition_penalty(static_cast<float>(*o.repetition_penalty));
  if (o.presence_penalty) s->set_presence_penalty(static_cast<float>(*o.presence_penalty));
  if (o.frequency_penalty) s->set_frequency_penalty(static_cast<float>(*o.frequency_penalty));
  if (o.seed) s->set_seed(*o.seed);
  s->set_max_new_tokens(static_cast<int32_t>(flags.max_tokens));
  s->set_min_new_tokens(static_cast<int32_t>(flags.min_tokens));
  s->set_ignore_eos(flags.ignore_eos);
  request.set_logprobs(flags.logprobs);
  return request;
}

std::string DescribeRouterError(const grpc::Status& status, const std::string& address) {
  // gRPC's numeric codes are absl's.
  std::string text = absl::StrCat(
      "router ", address, ": ", absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())),
      ": ", status.error_message());
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
      absl::StrAppend(&text, " (is a cluster serving there? `moectl cluster up --detach` starts one)");
      break;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      absl::StrAppend(&text, " (the --timeout passed)");
      break;
    default:
      break;
  }
  return text;
}

void GenerateViaRouter(const GenerationFlags& flags, const std::string& router, double timeout_s, bool json) {
  auto address = ParseRouterAddress(router);
  if (!address.ok()) Fail("generate", std::string(address.status().message()));
  auto channel = grpc::CreateChannel(*address, grpc::InsecureChannelCredentials());
  auto stub = moe::v1::Generation::NewStub(channel);
  const moe::v1::GenerateRequest request = ToGenerateRequest(flags);

  grpc::ClientContext ctx;
  if (timeout_s > 0) {
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
  }
  auto reader = stub->Generate(&ctx, request);
  moe::v1::GenerateResponse response;
  moe::v1::GenerateResponse last;
  while (reader->Read(&response)) {
    if (json) {
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
    if (!json) std::cout << std::endl;
    Fail("generate", DescribeRouterError(status, *address));
  }
  if (json) {
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
