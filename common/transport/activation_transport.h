// The data-plane seam (docs/data-plane.md): send a tagged buffer to a peer, receive from a peer.
// The implementations are loopback/ (in-process) and ucx/ (UCX: shared memory, TCP, RDMA), which
// share their receive side (inbox_transport.h, a TaggedInbox), and nccl/ (NCCL, GPU memory: rounds
// of matched sends and receives, the workers' --transport nccl; ReceiveAny is UNIMPLEMENTED there).
// Control (membership, rendezvous) goes over gRPC and is not part of this interface.
//
// Peers are small integers in one rank space per cluster (see engine/expert_placement.h for how
// attention and expert workers are numbered). Every wait has a deadline: a peer that does not answer
// in time yields UNAVAILABLE, never a hang.
#ifndef MOE_COMMON_TRANSPORT_ACTIVATION_TRANSPORT_H_
#define MOE_COMMON_TRANSPORT_ACTIVATION_TRANSPORT_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace moe::transport {

enum class MessageKind : uint8_t {
  kUnspecified = 0,
  kDispatch = 1,  // attention worker -> expert worker: token rows per local expert
  kCombine = 2,   // expert worker -> attention worker: expert outputs, same order
};

// Identifies one message of one round. A round is (step, layer, micro_batch) of one attention
// worker; `sender` is the sending peer. Receivers compare tags so a late or duplicate message is
// detected and dropped, never mixed into another round.
struct MessageTag {
  MessageKind kind = MessageKind::kUnspecified;
  uint64_t step = 0;
  uint32_t layer = 0;
  uint32_t micro_batch = 0;
  int32_t sender = 0;

  friend bool operator==(const MessageTag&, const MessageTag&) = default;
  std::string DebugString() const;
};

// Why a received message was discarded. The values index DropCounts.
enum class DropReason : int {
  kUnknownSender = 0,  // the claimed sender was not admitted (transport)
  kBadSecret,          // the claimed sender is admitted but the message's secret is not its (transport)
  kTooLarge,           // larger than the most a round from that sender can carry (transport)
  kQueueFull,          // the sender already has max_queued_per_sender messages queued
  kStepWindow,         // a step behind what the receiver waits for, or too far ahead of it
  kMalformed,          // a header that does not parse (transport)
};
inline constexpr int kNumDropReasons = 6;
// "unknown_sender", "bad_secret", "too_large", "queue_full", "step_window", "malformed": the
// `reason` label of the drop metrics (docs/metrics.md).
std::string_view DropReasonName(DropReason reason);
// Every reason's name, in DropReason order.
std::vector<std::string> DropReasonNames();
using DropCounts = std::array<uint64_t, kNumDropReasons>;

struct Message {
  MessageTag tag;
  std::vector<std::byte> payload;
};

class ActivationTransport {
 public:
  virtual ~ActivationTransport() = default;

  // This endpoint's peer id.
  virtual int32_t self() const = 0;

  // Sends `payload` to `peer` tagged `tag` (tag.sender must be self()). Returns once the buffer may
  // be reused. UNAVAILABLE if the peer is unknown or gone.
  virtual absl::Status Send(int32_t peer, const MessageTag& tag, std::span<const std::byte> payload) = 0;

  // Sends `*payload` as Send does, but may take the buffer instead of copying it: on return
  // `*payload` holds a buffer (whose size and contents are unspecified) for the caller to reuse for
  // its next message. The default sends a copy (Send) and leaves `*payload` as it was; the loopback
  // hands the buffer itself to the peer and gives back one the peers recycled (Recycle).
  virtual absl::Status SendBuffer(int32_t peer, const MessageTag& tag, std::vector<std::byte>* payload) {
    return Send(peer, tag, *payload);
  }
  // Gives back the buffer of a received message's payload once the caller is done with it, for a
  // later SendBuffer to reuse. The default frees it.
  virtual void Recycle(std::vector<std::byte>&& buffer) { std::vector<std::byte>().swap(buffer); }

  // The next message from any peer, in arrival order (expert workers serve rounds this way).
  // UNAVAILABLE when the deadline passes; CANCELLED after Shutdown().
  virtual absl::StatusOr<Message> ReceiveAny(absl::Time deadline) = 0;

  // The message from tag.sender with exactly `tag`. Messages from that sender with an older step
  // are dropped (counted in dropped_messages()); other messages stay queued for later calls.
  // UNAVAILABLE when the deadline passes; CANCELLED after Shutdown().
  virtual absl::StatusOr<Message> ReceiveTagged(const MessageTag& tag, absl::Time deadline) = 0;

  // Wakes every waiter with CANCELLED; later calls fail fast.
  virtual void Shutdown() = 0;

  // Messages received and discarded (any reason: stale or out-of-window steps, a full per-sender
  // queue, and what the transport refuses itself: unknown senders, bad secrets, oversized or
  // malformed messages), in all / by reason (indexed by DropReason).
  virtual uint64_t dropped_messages() const = 0;
  virtual DropCounts drop_counts() const = 0;
};

}  // namespace moe::transport

#endif  // MOE_COMMON_TRANSPORT_ACTIVATION_TRANSPORT_H_
