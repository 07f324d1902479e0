#include "common/transport/tagged_inbox.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace moe::transport {
namespace {

// A message the receiver no longer waits for: same sender and kind, older step.
bool IsStaleFor(const MessageTag& queued, const MessageTag& wanted) {
  return queued.sender == wanted.sender && queued.kind == wanted.kind && queued.step < wanted.step;
}

}  // namespace

TaggedInbox::SenderQueue* TaggedInbox::Sender(int32_t sender) {
  return &senders_[sender];
}

bool TaggedInbox::Deliver(Message message) {
  absl::MutexLock lock(&mu_);
  if (shutdown_) return false;
  SenderQueue* queue = Sender(message.tag.sender);
  queue->messages.push_back(QueuedMessage{next_arrival_++, std::move(message)});
  ++queue->delivered;
  ++queued_;
  return true;
}

absl::StatusOr<Message> TaggedInbox::ReceiveAny(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return shutdown_ || queued_ > 0; };
  mu_.AwaitWithDeadline(absl::Condition(&ready), deadline);
  if (shutdown_) return absl::CancelledError("transport shut down");
  if (queued_ == 0) return absl::UnavailableError("no message from any peer before the deadline");
  // The oldest message is at the front of some sender's queue; there are few senders.
  SenderQueue* oldest = nullptr;
  for (auto& [sender, queue] : senders_) {
    if (queue.messages.empty()) continue;
    if (oldest == nullptr || queue.messages.front().arrival < oldest->messages.front().arrival) {
      oldest = &queue;
    }
  }
  Message message = std::move(oldest->messages.front().message);
  oldest->messages.pop_front();
  --queued_;
  return message;
}

absl::StatusOr<Message> TaggedInbox::ReceiveTagged(const MessageTag& tag, absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  SenderQueue* queue = Sender(tag.sender);
  for (;;) {
    if (shutdown_) return absl::CancelledError("transport shut down");
    for (auto it = queue->messages.begin(); it != queue->messages.end();) {
      if (it->message.tag == tag) {
        Message message = std::move(it->message);
        queue->messages.erase(it);
        --queued_;
        return message;
      }
      if (IsStaleFor(it->message.tag, tag)) {
        ++dropped_;  // a late answer of an abandoned round
        --queued_;
        it = queue->messages.erase(it);
        continue;
      }
      ++it;
    }
    if (!queue->failure.ok()) {
      return absl::UnavailableError(
          absl::StrCat("waiting for ", tag.DebugString(), ": ", queue->failure.message()));
    }
    const uint64_t seen = queue->delivered;
    auto changed = [this, queue, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return shutdown_ || queue->delivered != seen || !queue->failure.ok();
    };
    if (!mu_.AwaitWithDeadline(absl::Condition(&changed), deadline)) {
      return absl::UnavailableError(
          absl::StrCat("peer ", tag.sender, " did not answer ", tag.DebugString(), " in time"));
    }
  }
}

void TaggedInbox::MarkPeerFailed(int32_t peer, absl::Status why) {
  absl::MutexLock lock(&mu_);
  SenderQueue* queue = Sender(peer);
  if (queue->failure.ok()) {
    queue->failure =
        why.ok() ? absl::UnavailableError(absl::StrCat("peer ", peer, " failed")) : std::move(why);
  }
}

void TaggedInbox::ClearPeerFailure(int32_t peer) {
  absl::MutexLock lock(&mu_);
  if (auto it = senders_.find(peer); it != senders_.end()) it->second.failure = absl::OkStatus();
}

absl::Status TaggedInbox::PeerFailure(int32_t peer) const {
  absl::MutexLock lock(&mu_);
  auto it = senders_.find(peer);
  return it == senders_.end() ? absl::OkStatus() : it->second.failure;
}

bool TaggedInbox::Shutdown() {
  absl::MutexLock lock(&mu_);
  if (shutdown_) return false;
  shutdown_ = true;
  for (auto& [sender, queue] : senders_) queue.messages.clear();
  queued_ = 0;
  return true;
}

bool TaggedInbox::is_shut_down() const {
  absl::MutexLock lock(&mu_);
  return shutdown_;
}

uint64_t TaggedInbox::dropped_messages() const {
  absl::MutexLock lock(&mu_);
  return dropped_;
}

size_t TaggedInbox::queued_messages() const {
  absl::MutexLock lock(&mu_);
  return queued_;
}

}  // namespace moe::transport
