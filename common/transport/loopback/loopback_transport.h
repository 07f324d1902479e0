// In-process ActivationTransport: endpoints of one LoopbackHub exchange messages through their
// inboxes (receiving as in inbox_transport.h). Send copies the payload, as a network would;
// SendBuffer hands the sender's buffer itself to the peer and gives the sender one from the hub's
// pool of recycled buffers in exchange (Recycle fills the pool), so that a steady stream of rounds
// (embedded mode's dispatches and combine answers) reuses the same few buffers instead of allocating,
// page-faulting and copying tens of MiB per MoE layer. Used by embedded mode and tests.
//
// Thread safety: all methods are thread-safe.
#ifndef MOE_COMMON_TRANSPORT_LOOPBACK_LOOPBACK_TRANSPORT_H_
#define MOE_COMMON_TRANSPORT_LOOPBACK_LOOPBACK_TRANSPORT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "common/transport/activation_transport.h"
#include "common/transport/inbox_transport.h"

namespace moe::transport {

class LoopbackHub;

class LoopbackTransport final : public InboxTransport {
 public:
  // Copies `payload` straight into the peer's inbox. UNAVAILABLE for an unknown or disconnected
  // peer.
  absl::Status Send(int32_t peer, const MessageTag& tag, std::span<const std::byte> payload) override;
  // Moves `*payload` into the peer's inbox (no copy) and leaves in `*payload` a buffer from the hub's
  // pool (empty when the pool is). On an error `*payload` is left as it was.
  absl::Status SendBuffer(int32_t peer, const MessageTag& tag, std::vector<std::byte>* payload) override;
  // Puts `buffer` in the hub's pool (its size and capacity kept), or frees it when the pool is full.
  void Recycle(std::vector<std::byte>&& buffer) override;
  void Shutdown() override;

 private:
  friend class LoopbackHub;
  // In-process endpoints trust each other (one process, one engine): their inboxes are unbounded;
  // the bounds are for the network (UcxTransport).
  LoopbackTransport(LoopbackHub* hub, int32_t self)
      : InboxTransport(self, InboxLimits::Unbounded()), hub_(hub) {}

  LoopbackHub* const hub_;
};

// Owns the endpoints. Endpoints must not outlive the hub.
class LoopbackHub {
 public:
  // Creates (or returns the existing) endpoint for `peer`.
  LoopbackTransport* Endpoint(int32_t peer);
  // Removes a peer: later sends to it fail with UNAVAILABLE (simulates a dead worker) and its
  // waiters are cancelled.
  void Disconnect(int32_t peer);

  // The most buffers the pool keeps; a recycled buffer beyond them is freed.
  static constexpr size_t kMaxPooledBuffers = 16;
  // Buffers in the pool now (for tests).
  size_t pooled_buffers();

 private:
  friend class LoopbackTransport;
  LoopbackTransport* Find(int32_t peer);
  // The most recently recycled buffer, or an empty one.
  std::vector<std::byte> TakeBuffer();
  void PutBuffer(std::vector<std::byte>&& buffer);

  absl::Mutex pool_mu_;
  std::vector<std::vector<std::byte>> pool_ ABSL_GUARDED_BY(pool_mu_);
  absl::Mutex mu_;
  absl::flat_hash_map<int32_t, std::unique_ptr<LoopbackTransport>> endpoints_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<int32_t, bool> disconnected_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe::transport

#endif  // MOE_COMMON_TRANSPORT_LOOPBACK_LOOPBACK_TRANSPORT_H_
