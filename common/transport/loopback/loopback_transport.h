// In-process ActivationTransport: endpoints of one LoopbackHub exchange messages through their
// inboxes (copying the payload, as a network would; receiving as in inbox_transport.h). Used by
// embedded mode and tests.
//
// Thread safety: all methods are thread-safe.
#ifndef MOE_COMMON_TRANSPORT_LOOPBACK_LOOPBACK_TRANSPORT_H_
#define MOE_COMMON_TRANSPORT_LOOPBACK_LOOPBACK_TRANSPORT_H_

#include <cstdint>
#include <memory>

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

 private:
  friend class LoopbackTransport;
  LoopbackTransport* Find(int32_t peer);
  absl::Mutex mu_;
  absl::flat_hash_map<int32_t, std::unique_ptr<LoopbackTransport>> endpoints_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<int32_t, bool> disconnected_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe::transport

#endif  // MOE_COMMON_TRANSPORT_LOOPBACK_LOOPBACK_TRANSPORT_H_
