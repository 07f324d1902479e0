#include "common/transport/loopback/loopback_transport.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace moe::transport {

std::string MessageTag::DebugString() const {
  return absl::StrCat("{kind=", static_cast<int>(kind), " step=", step, " layer=", layer, " mb=", micro_batch,
                      " sender=", sender, "}");
}

LoopbackTransport* LoopbackHub::Endpoint(int32_t peer) {
  absl::MutexLock lock(&mu_);
  auto& slot = endpoints_[peer];
  if (!slot) slot.reset(new LoopbackTransport(this, peer));
  disconnected_.erase(peer);
  return slot.get();
}

void LoopbackHub::Disconnect(int32_t peer) {
  LoopbackTransport* endpoint = nullptr;
  {
    absl::MutexLock lock(&mu_);
    disconnected_[peer] = true;
    auto it = endpoints_.find(peer);
    if (it != endpoints_.end()) endpoint = it->second.get();
  }
  if (endpoint != nullptr) endpoint->Shutdown();
}

LoopbackTransport* LoopbackHub::Find(int32_t peer) {
  absl::MutexLock lock(&mu_);
  if (disconnected_.contains(peer)) return nullptr;
  auto it = endpoints_.find(peer);
  return it == endpoints_.end() ? nullptr : it->second.get();
}

absl::Status LoopbackTransport::Send(int32_t peer, const MessageTag& tag,
                                     std::span<const std::byte> payload) {
  if (tag.sender != self_) {
    return absl::InvalidArgumentError(absl::StrCat("tag.sender ", tag.sender, " != self ", self_));
  }
  LoopbackTransport* target = hub_->Find(peer);
  if (target == nullptr) return absl::UnavailableError(absl::StrCat("peer ", peer, " is gone"));
  target->Deliver(Message{tag, std::vector<std::byte>(payload.begin(), payload.end())});
  return absl::OkStatus();
}

void LoopbackTransport::Deliver(Message message) {
  absl::MutexLock lock(&mu_);
  if (shutdown_) return;
  inbox_.push_back(std::move(message));
}

absl::StatusOr<Message> LoopbackTransport::ReceiveAny(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return shutdown_ || !inbox_.empty(); };
  mu_.AwaitWithDeadline(absl::Condition(&ready), deadline);
  if (shutdown_) return absl::CancelledError("transport shut down");
  if (inbox_.empty()) return absl::UnavailableError("no message before the deadline");
  Message message = std::move(inbox_.front());
  inbox_.pop_front();
  return message;
}

absl::StatusOr<Message> LoopbackTransport::ReceiveTagged(const MessageTag& tag, absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  for (;;) {
    for (auto it = inbox_.begin(); it != inbox_.end();) {
      const MessageTag& t = it->tag;
      if (t == tag) {
        Message message = std::move(*it);
        inbox_.erase(it);
        return message;
      }
      if (t.sender == tag.sender && t.kind == tag.kind && t.step < tag.step) {
        ++dropped_;  // a late answer of an abandoned round
        it = inbox_.erase(it);
        continue;
      }
      ++it;
    }
    if (shutdown_) return absl::CancelledError("transport shut down");
    const size_t seen = inbox_.size();
    auto changed = [this, seen]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return shutdown_ || inbox_.size() != seen; };
    if (!mu_.AwaitWithDeadline(absl::Condition(&changed), deadline)) {
      return absl::UnavailableError(
          absl::StrCat("peer ", tag.sender, " did not answer ", tag.DebugString(), " in time"));
    }
  }
}

void LoopbackTransport::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutdown_ = true;
  inbox_.clear();
}

uint64_t LoopbackTransport::dropped_messages() const {
  absl::MutexLock lock(&mu_);
  return dropped_;
}

}  // namespace moe::transport
