#include "common/engine/expert_shard_server.h"

#include <iostream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/transport/moe_message.h"

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
  return served_.load();
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
    } else if (observer_ != nullptr) {
      observer_->OnIdle(absl::Now());
    }
  }
}

void ExpertShardServer::ServeOne(const transport::Message& message) {
  absl::MutexLock serving(&serve_mu_);
  ServeLocked(message);
}

void ExpertShardServer::ServeLocked(const transport::Message& message) {
  const int64_t layer = message.tag.layer;
  if (message.tag.kind != transport::MessageKind::kDispatch) {
    std::cerr << "expert shard server: unexpected message " << message.tag.DebugString() << "\n";
    ++failed_;
    if (observer_ != nullptr) {
      observer_->OnRoundFailed(
          {.layer = layer,
           .status = absl::InvalidArgumentError(absl::StrCat("not a dispatch: ", message.tag.DebugString())),
           .compute = absl::ZeroDuration(),
           .bytes_received = message.payload.size()});
    }
    return;
  }
  transport::MessageTag reply_tag = message.tag;
  reply_tag.kind = transport::MessageKind::kCombine;
  reply_tag.sender = transport_->self();

  const absl::Time start = absl::Now();
  absl::StatusOr<std::vector<std::byte>> served = block_->Serve(layer, message.payload);
  const absl::Duration compute = absl::Now() - start;
  std::vector<std::byte> reply;
  if (served.ok()) {
    reply = *std::move(served);
    ++served_;
  } else {
    std::cerr << "expert shard server: " << served.status() << " for " << message.tag.DebugString() << "\n";
    transport::EncodeMoeMessageHeader(0, {}, &reply);
    ++failed_;
  }
  // The answer carries how long this worker held the round, so the attention worker can tell
  // expert time from transport (moe_message.h, version 2). The reply was encoded just above. The
  // observer counts the activation bytes, without the stamp.
  const size_t reply_bytes = reply.size();
  transport::StampExpertTime(absl::Now() - start, &reply).IgnoreError();
  const absl::Status sent = transport_->Send(message.tag.sender, reply_tag, reply);
  if (!sent.ok()) {
    std::cerr << "expert shard server: reply to peer " << message.tag.sender << " failed: " << sent << "\n";
  }
  if (observer_ == nullptr) return;
  if (served.ok()) {
    ReportServed(message, start, compute, sent.ok() ? reply_bytes : 0);
  } else {
    observer_->OnRoundFailed({.layer = layer,
                              .status = served.status(),
                              .compute = compute,
                              .bytes_received = message.payload.size()});
  }
}

void ExpertShardServer::ReportServed(const transport::Message& message, absl::Time start,
                                     absl::Duration compute, uint64_t bytes_sent) {
  std::vector<uint64_t> rows(static_cast<size_t>(block_->num_experts()), 0);
  // Serve validated the message (every group's expert is hosted here), so decoding it again cannot
  // fail; it only gives the row counts.
  absl::StatusOr<transport::MoeMessageView> view = transport::DecodeMoeMessage(message.payload);
  if (view.ok()) {
    for (const transport::ExpertGroup& group : view->groups) {
      const int64_t local = group.expert - block_->first_expert();
      if (local >= 0 && local < block_->num_experts()) {
        rows[static_cast<size_t>(local)] += static_cast<uint64_t>(group.num_rows);
      }
    }
  }
  observer_->OnRoundServed({.layer = message.tag.layer,
                            .rows_per_expert = rows,
                            .start = start,
                            .compute = compute,
                            .bytes_received = message.payload.size(),
                            .bytes_sent = bytes_sent});
}

}  // namespace moe::engine
