#include "common/transport/loopback/loopback_transport.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace moe::transport {

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
  if (absl::Status s = CheckSender(tag); !s.ok()) return s;
  LoopbackTransport* target = hub_->Find(peer);
  if (target == nullptr) return absl::UnavailableError(absl::StrCat("peer ", peer, " is gone"));
  target->inbox().Deliver(Message{tag, std::vector<std::byte>(payload.begin(), payload.end())});
  return absl::OkStatus();
}

void LoopbackTransport::Shutdown() {
  inbox().Shutdown();
}

}  // namespace moe::transport
