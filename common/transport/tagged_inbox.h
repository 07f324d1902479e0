// The receive side every ActivationTransport shares (docs/data-plane.md): a transport's network
// code hands each received message to Deliver(); ReceiveAny and ReceiveTagged implement the
// matching rules of activation_transport.h on top of it, so loopback/ and ucx/ (and later
// transports) cannot drift apart.
//
// Messages are kept per sender, each sender's in its arrival order, with a global arrival number so
// ReceiveAny can hand them out in the order they arrived from all senders together, as long as no
// sender has a backlog; when one has, ReceiveAny is fair (see below).
//
// Bounds (docs/data-plane.md#admission-and-bounds), per sender, so that a flood from one peer can
// neither grow memory without bound nor delay another peer's round:
//  - at most InboxLimits::max_queued_per_sender messages are queued per sender; more are dropped;
//  - a step window: once the receiver has waited for (ReceiveTagged) or taken (ReceiveAny) step s
//    from a sender, that sender's messages with a step below s, or above s + max_steps_ahead, are
//    dropped on delivery (before that, any step is accepted);
//  - ReceiveAny serves senders fairly: a message's turn is the later of its arrival and its
//    sender's previous turn, so a sender with a backlog gets one message out between two of any
//    other sender that is waiting.
// Every dropped message is counted by reason (DropReason); transports count the drops they decide
// themselves (unknown sender, bad secret, too large, malformed) here too, so one place has them all.
//
// A sender may be marked failed (the transport learnt that the peer is gone): ReceiveTagged from it
// then returns UNAVAILABLE once its matching messages are used up, instead of waiting for the
// deadline. Failure does not affect ReceiveAny (an expert worker keeps serving the other peers).
//
// A transport whose network code can run on any thread (UCX: progress the worker) may set a poller
// (SetPoller): a receiver with nothing to take then polls it for up to `spin` before it sleeps, so
// a message about to arrive is delivered on the waiting thread itself, without a wake-up; and with
// `drive`, it then sleeps in the poller (on the network's own events) rather than on the inbox, so
// an arriving message wakes the receiver directly instead of a thread that hands it over. With
// SetAdaptivePoller the spin of each wait is decided by an AdaptiveSpin (adaptive_spin.h) fed with
// this inbox's recent waits: receivers spin only while answers have been coming quickly.
//
// Thread safety: all methods are thread-safe; any number of threads may deliver and receive at once.
// SetPoller / SetAdaptivePoller only before the first receive.
#ifndef MOE_COMMON_TRANSPORT_TAGGED_INBOX_H_
#define MOE_COMMON_TRANSPORT_TAGGED_INBOX_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/container/node_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/transport/activation_transport.h"
#include "common/transport/adaptive_spin.h"

namespace moe::transport {

// What a receiver with nothing to take runs before it sleeps (TaggedInbox::SetPoller): BeginSpin,
// Poll until a message is there or the spin is over, EndSpin. Poll runs the transport's network
// code on the calling thread (it may Deliver into the inbox; it must not receive from it) and
// returns whether it did anything. Thread-safe: several receivers may spin at once.
class InboxPoller {
 public:
  virtual ~InboxPoller() = default;
  virtual void BeginSpin() = 0;
  virtual bool Poll() = 0;
  virtual void EndSpin() = 0;
  // Between BeginSpin and EndSpin: blocks until the network has something for Poll, or `until`
  // (or a little earlier, spuriously). Used by receivers that drive (SetPoller's `drive`).
  virtual void WaitForActivity(absl::Time until) = 0;
};

struct InboxLimits {
  // Messages queued per sender at most. Legitimate traffic queues one round per sender (two with a
  // late answer of an abandoned round); 0 means unbounded.
  size_t max_queued_per_sender = 16;
  // How far beyond the step the receiver last waited for or took from a sender its messages may
  // be. Steps of an attention worker increase by one per forward pass. UINT64_MAX: no step window
  // at all (neither ahead nor behind is dropped on delivery; ReceiveTagged still drops stale ones).
  uint64_t max_steps_ahead = 64;

  static InboxLimits Unbounded() { return InboxLimits{0, UINT64_MAX}; }
};

// What the receivers' waits did with the poller (TaggedInbox::spin_counts): waits that had to wait
// for a message (or a deadline), of those the ones that spun, and of those the ones whose message
// came during the spin (no sleep, no wake-up).
struct SpinCounts {
  uint64_t waits = 0;
  uint64_t spins = 0;
  uint64_t caught = 0;
};

class TaggedInbox {
 public:
  explicit TaggedInbox(InboxLimits limits = {}) : limits_(limits) {}
  TaggedInbox(const TaggedInbox&) = delete;
  TaggedInbox& operator=(const TaggedInbox&) = delete;

  // Lets receivers poll `poller` (not owned; it must outlive the receives) for up to `spin` before
  // they sleep; with `drive` they then sleep in poller->WaitForActivity, polling after each wake-up,
  // in slices of at most kDriveSlice (so a Shutdown or a failure marked by another thread is seen
  // within one), instead of on the inbox. A null poller, or a zero spin without `drive`, turns it
  // off. Call before any receive.
  void SetPoller(InboxPoller* poller, absl::Duration spin, bool drive = false);
  // As SetPoller, but each wait spins for what an AdaptiveSpin with `config` (which must be valid)
  // decides from this inbox's previous waits (shared by all its receivers), zero included.
  void SetAdaptivePoller(InboxPoller* poller, const AdaptiveSpinConfig& config, bool drive = false);
  static constexpr absl::Duration kDriveSlice = absl::Milliseconds(10);

  // Queues a received message under message.tag.sender, unless the sender's queue is full or the
  // step is outside its window (then the message is dropped and counted). Returns false if the
  // message was not queued (dropped, or after Shutdown()).
  bool Deliver(Message message);

  // The drop Deliver would decide now for a message tagged `tag` from a sender that has `pending`
  // more messages on the way (e.g. rendezvous receives in flight), without counting it: lets a
  // transport refuse a message before receiving its payload. nullopt: it would be queued.
  std::optional<DropReason> Screen(const MessageTag& tag, size_t pending = 0) const;
  // Counts a message the transport dropped itself.
  void CountDrop(DropReason reason);

  // Forgets what is known of `peer`'s traffic: discards its queued messages (uncounted) and its
  // step window, for a peer (re)admitted afresh, e.g. a restarted one whose steps start over.
  void ResetSender(int32_t peer);

  // The next queued message from any sender: the one whose turn comes first (its arrival, or its
  // sender's previous turn if that was later; see above). UNAVAILABLE when none arrives before `deadline`;
  // CANCELLED after Shutdown().
  absl::StatusOr<Message> ReceiveAny(absl::Time deadline);

  // The queued message whose tag equals `tag` exactly (sender included), waiting for it until
  // `deadline`. Messages from tag.sender of the same kind with a step older than tag.step are
  // dropped on the way (late answers of abandoned rounds; counted as kStepWindow); all other
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

  // Messages dropped, all reasons together / by reason.
  uint64_t dropped_messages() const;
  DropCounts drop_counts() const;
  // Messages queued now (all senders / from `sender`).
  size_t queued_messages() const;
  size_t queued_messages(int32_t sender) const;
  // The receivers' waits and spins so far.
  SpinCounts spin_counts() const;

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
    // The highest step waited for (ReceiveTagged) or taken (ReceiveAny) from this sender: the
    // bottom of its step window. nullopt until then.
    std::optional<uint64_t> floor;
    uint64_t last_turn = 0;  // the clock value when ReceiveAny last served this sender
  };

  // Creates the sender's entry on first use. The map is node-based and entries are never erased,
  // so the pointer stays valid while a waiter has released the lock.
  SenderQueue* Sender(int32_t sender) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::optional<DropReason> ScreenLocked(const MessageTag& tag, size_t pending) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RaiseFloor(SenderQueue* queue, uint64_t step) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits until `ready` holds or `deadline` passed, and returns whether it holds: first, when a
  // poller is set, calls it without mu_ held for the spin (fixed or adaptive), then with `drive`
  // sleeps in it, else on mu_. Feeds the adaptive spin with the wait's outcome. Returns with mu_
  // held, as it was called.
  template <typename Ready>
  bool WaitLocked(Ready ready, absl::Time deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const InboxLimits limits_;
  InboxPoller* poller_ = nullptr;  // set before use, then read-only
  absl::Duration spin_;
  bool drive_ = false;
  mutable absl::Mutex mu_;
  // Set by SetAdaptivePoller: decides each wait's spin instead of spin_.
  std::optional<AdaptiveSpin> adaptive_ ABSL_GUARDED_BY(mu_);
  SpinCounts spin_counts_ ABSL_GUARDED_BY(mu_);
  absl::node_hash_map<int32_t, SenderQueue> senders_ ABSL_GUARDED_BY(mu_);
  // Ticks on every delivery and every ReceiveAny: arrival numbers and turns share it.
  uint64_t clock_ ABSL_GUARDED_BY(mu_) = 0;
  size_t queued_ ABSL_GUARDED_BY(mu_) = 0;
  DropCounts drops_ ABSL_GUARDED_BY(mu_) = {};
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace moe::transport

#endif  // MOE_COMMON_TRANSPORT_TAGGED_INBOX_H_
