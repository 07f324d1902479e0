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

absl::Status LoopbackTransport::SendBuffer(int32_t peer, const MessageTag& tag,
                                           std::vector<std::byte>* payload) {
  if (absl::Status s = CheckSender(tag); !s.ok()) return s;
  LoopbackTransport* target = hub_->Find(peer);
  if (target == nullptr) return absl::UnavailableError(absl::StrCat("peer ", peer, " is gone"));
  std::vector<std::byte> sent = std::exchange(*payload, hub_->TakeBuffer());
  target->inbox().Deliver(Message{tag, std::move(sent)});
  return absl::OkStatus();
}

void LoopbackTransport::Recycle(std::vector<std::byte>&& buffer) {
  hub_->PutBuffer(std::move(buffer));
}

std::vector<std::byte> LoopbackHub::TakeBuffer() {
  absl::MutexLock lock(&pool_mu_);
  if (pool_.empty()) return {};
  std::vector<std::byte> buffer = std::move(pool_.back());
  pool_.pop_back();
  return buffer;
}

void LoopbackHub::PutBuffer(std::vector<std::byte>&& buffer) {
  std::vector<std::byte> taken = std::move(buffer);
  if (taken.capacity() == 0) return;
  absl::MutexLock lock(&pool_mu_);
  if (pool_.size() < kMaxPooledBuffers) pool_.push_back(std::move(taken));
  // Otherwise the pool is full and `taken` is freed on return, after the lock is released.
}

size_t LoopbackHub::pooled_buffers() {
  absl::MutexLock lock(&pool_mu_);
  return pool_.size();
}

void LoopbackTransport::Shutdown() {
  inbox().Shutdown();
}

}  // namespace moe::transport
