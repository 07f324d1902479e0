#include "common/engine/expert_shard_server.h"

#include <iostream>
#include <utility>

#include "absl/time/clock.h"

namespace moe::engine {
namespace {

// How long the loop waits for a message before it looks at draining_ again (and tells the
// observer it is idle). Bounds how long Drain waits on an idle server.
constexpr absl::Duration kPollInterval = absl::Milliseconds(200);

}  // namespace

void ExpertShardServer::Start() {
  absl::MutexLock lock(&control_mu_);
  if (thread_.joinable()) return;
  draining_ = false;
  thread_ = std::thread([this] { Loop(); });
}

uint64_t ExpertShardServer::Drain() {
  draining_ = true;
  // The loop looks at draining_ only between rounds, so the join returns once the round in
  // progress is answered.
  absl::MutexLock lock(&control_mu_);
  if (thread_.joinable()) thread_.join();
  return handler_.rounds_served();
}

void ExpertShardServer::Stop() {
  draining_ = true;
  {
    // Wait for the round in progress; the loop serves no other once it sees draining_.
    absl::MutexLock serving(&serve_mu_);
  }
  transport_->Shutdown();  // wakes the loop's receive at once (CANCELLED)
  absl::MutexLock lock(&control_mu_);
  if (thread_.joinable()) thread_.join();
}

void ExpertShardServer::Loop() {
  while (!draining_) {
    absl::StatusOr<transport::Message> message = transport_->ReceiveAny(absl::Now() + kPollInterval);
    if (absl::IsCancelled(message.status())) return;
    absl::MutexLock serving(&serve_mu_);
    // A message taken after draining began stays unanswered, as if it had arrived after the drain.
    if (draining_) return;
    if (message.ok()) {
      ServeLocked(*message);
      transport_->Recycle(std::move(message->payload));
    } else {
      handler_.Idle(absl::Now());
    }
  }
}

void ExpertShardServer::ServeOne(const transport::Message& message) {
  absl::MutexLock serving(&serve_mu_);
  ServeLocked(message);
}

void ExpertShardServer::ServeLocked(const transport::Message& message) {
  ExpertRoundHandler::Answer answer = handler_.Handle(message, transport_->self(), std::move(answer_buffer_));
  absl::Status sent;
  if (answer.reply) {
    sent = transport_->SendBuffer(message.tag.sender, answer.tag, &answer.payload);
    if (!sent.ok()) {
      std::cerr << "expert shard server: reply to peer " << message.tag.sender << " failed: " << sent << "\n";
    }
  }
  handler_.Finish(message, answer, sent);  // reads neither the payload nor the tag
  answer_buffer_ = std::move(answer.payload);
}

}  // namespace moe::engine
