#include "common/engine/expert_server.h"

#include <iostream>

#include "absl/time/clock.h"
#include "common/transport/moe_message.h"

namespace moe::engine {

void ExpertServer::Start() {
  stopping_ = false;
  thread_ = std::thread([this] { Loop(); });
}

void ExpertServer::Stop() {
  stopping_ = true;
  transport_->Shutdown();
  if (thread_.joinable()) thread_.join();
}

void ExpertServer::ServeOne(const transport::Message& message) {
  transport::MessageTag reply_tag = message.tag;
  reply_tag.kind = transport::MessageKind::kCombine;
  reply_tag.sender = transport_->self();
  std::vector<std::byte> reply;
  if (message.tag.kind != transport::MessageKind::kDispatch) {
    std::cerr << "expert server: unexpected message " << message.tag.DebugString() << "\n";
    ++failed_;
    return;
  }
  auto served = block_->Serve(message.tag.layer, message.payload);
  if (served.ok()) {
    reply = *std::move(served);
    ++served_;
  } else {
    // Answer with an empty message: the sender sees the group mismatch and fails its step, rather
    // than waiting for a deadline.
    std::cerr << "expert server: " << served.status() << " for " << message.tag.DebugString() << "\n";
    transport::EncodeMoeMessageHeader(0, {}, &reply);
    ++failed_;
  }
  absl::Status sent = transport_->Send(message.tag.sender, reply_tag, reply);
  if (!sent.ok()) {
    std::cerr << "expert server: reply to " << message.tag.sender << " failed: " << sent << "\n";
  }
}

void ExpertServer::Loop() {
  while (!stopping_) {
    auto message = transport_->ReceiveAny(absl::Now() + absl::Milliseconds(200));
    if (absl::IsCancelled(message.status())) return;
    if (!message.ok()) continue;  // deadline: poll stopping_ again
    ServeOne(*message);
  }
}

}  // namespace moe::engine
