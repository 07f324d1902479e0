// The receive side every ActivationTransport shares (docs/data-plane.md): a transport's network
// code hands each received message to Deliver(); ReceiveAny and ReceiveTagged implement the
// matching rules of activation_transport.h on top of it, so loopback/ and ucx/ (and later
// transports) cannot drift apart.
//
// Messages are kept per sender, each sender's in its arrival order, with a global arrival number so
// ReceiveAny can still hand them out in the order they arrived from all senders together. Keeping
// them per sender is the seam for per-sender limits (a bounded queue and a step window per admitted
// peer, dropping and counting a flood): that state belongs in SenderQueue. Nothing is bounded yet.
//
// A sender may be marked failed (the transport learnt that the peer is gone): ReceiveTagged from it
// then returns UNAVAILABLE once its matching messages are used up, instead of waiting for the
// deadline. Failure does not affect ReceiveAny (an expert worker keeps serving the other peers).
//
// Thread safety: all methods are thread-safe; any number of threads may deliver and receive at once.
#ifndef MOE_COMMON_TRANSPORT_TAGGED_INBOX_H_
#define MOE_COMMON_TRANSPORT_TAGGED_INBOX_H_

#include <cstddef>
#include <cstdint>
#include <deque>

#include "absl/base/thread_annotations.h"
#include "absl/container/node_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/transport/activation_transport.h"

namespace moe::transport {

class TaggedInbox {
 public:
  TaggedInbox() = default;
  TaggedInbox(const TaggedInbox&) = delete;
  TaggedInbox& operator=(const TaggedInbox&) = delete;

  // Queues a received message under message.tag.sender. Returns false (and discards the message)
  // after Shutdown().
  bool Deliver(Message message);

  // The oldest queued message from any sender. UNAVAILABLE when none arrives before `deadline`;
  // CANCELLED after Shutdown().
  absl::StatusOr<Message> ReceiveAny(absl::Time deadline);

  // The queued message whose tag equals `tag` exactly (sender included), waiting for it until
  // `deadline`. Messages from tag.sender of the same kind with a step older than tag.step are
  // dropped on the way (late answers of abandoned rounds; counted in dropped_messages()); all other
  // messages stay queued. CANCELLED after Shutdown(); UNAVAILABLE naming the sender when the
  // deadline passes or when the sender is marked failed and no matching message is queued.
  absl::StatusOr<Message> ReceiveTagged(const MessageTag& tag, absl::Time deadline);

  // Records that `peer` is gone and wakes the waiters for its messages. `why` should be
  // UNAVAILABLE naming the peer (an OK `why` is replaced by such an error). The first reason is kept
  // until ClearPeerFailure. Messages already queued from the peer stay receivable. Transports also
  // consult PeerFailure before sending, so a peer's failure is recorded in one place.
  void MarkPeerFailed(int32_t peer, absl::Status why);
  // Forgets a recorded failure (the peer reconnected).
  void ClearPeerFailure(int32_t peer);
  // The recorded failure of `peer`, OK if none.
  absl::Status PeerFailure(int32_t peer) const;

  // Discards every queued message, wakes every waiter with CANCELLED and refuses later deliveries.
  // Returns true for the call that shut the inbox down, false if it already was.
  bool Shutdown();
  bool is_shut_down() const;

  // Messages dropped as stale by ReceiveTagged.
  uint64_t dropped_messages() const;
  // Messages queued now (all senders).
  size_t queued_messages() const;

 private:
  struct QueuedMessage {
    uint64_t arrival;  // global arrival number, for ReceiveAny's order across senders
    Message message;
  };
  // Everything known about one sender.
  struct SenderQueue {
    std::deque<QueuedMessage> messages;  // in arrival order
    uint64_t delivered = 0;              // messages ever delivered, so a waiter sees new ones
    absl::Status failure;                // OK unless the sender is marked failed
  };

  // Creates the sender's entry on first use. The map is node-based and entries are never erased,
  // so the pointer stays valid while a waiter has released the lock.
  SenderQueue* Sender(int32_t sender) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  absl::node_hash_map<int32_t, SenderQueue> senders_ ABSL_GUARDED_BY(mu_);
  uint64_t next_arrival_ ABSL_GUARDED_BY(mu_) = 0;
  size_t queued_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace moe::transport

#endif  // MOE_COMMON_TRANSPORT_TAGGED_INBOX_H_
