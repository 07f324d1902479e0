// The NCCL data plane (docs/data-plane.md#nccl-transport): rounds of point-to-point messages between
// GPU workers over one NCCL communicator, on top of NcclApi (real: cuda_nccl_api.h; fake, for the CPU
// tests: fake_nccl_api.h).
//
// NCCL has no receive-from-anyone and no sizes of its own: both ends post matching operations. So a
// round (Exchange) is two grouped stages, counts first (like DeepEP's layout exchange):
//   1. every send posts a fixed 40-byte header (tag + payload size) and every expected message posts
//      a receive for one, in one ncclGroupStart/End;
//   2. the payloads, now of sizes both sides know, in a second group (empty messages post nothing).
// Received headers are checked against the expected tags: a mismatch is INTERNAL (the payload is
// still drained, so the communicator stays in step). Every wait is polled against the round's
// deadline (non-blocking communicator, CommGetAsyncError + StreamQuery): on timeout, an NCCL error or
// Shutdown the communicator is aborted (CommAbort) and the call answers UNAVAILABLE naming the
// peers of the unfinished stage (CANCELLED for Shutdown), shortly after the deadline, never NCCL's
// ~10-minute watchdog. The transport is then disconnected until Rebuild joins a new communicator
// (new unique id, next generation, new rank map: nccl_bootstrap.h), which survivors do in place.
//
// One round at a time per transport (NCCL's communicators are not for concurrent use); calls from
// several threads queue on a mutex.
#ifndef MOE_COMMON_TRANSPORT_NCCL_NCCL_TRANSPORT_H_
#define MOE_COMMON_TRANSPORT_NCCL_NCCL_TRANSPORT_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "common/transport/activation_transport.h"
#include "common/transport/nccl/nccl_api.h"
#include "common/transport/nccl/nccl_bootstrap.h"

namespace moe::transport {

inline constexpr size_t kNcclHeaderBytes = 40;

struct NcclTransportOptions {
  // The largest payload one message may carry, either way: a larger send is INVALID_ARGUMENT, a
  // larger announced receive aborts the communicator (the sender is broken or hostile).
  size_t max_message_bytes = size_t{256} << 20;
  // The deadline of ActivationTransport::Send (which waits for the peer's matching receive).
  absl::Duration send_timeout = absl::Seconds(10);
  // The longest sleep between two polls of a wait.
  absl::Duration max_poll_interval = absl::Milliseconds(1);
};

class NcclTransport : public ActivationTransport {
 public:
  // `api` must outlive the transport. There is no communicator until Rebuild.
  NcclTransport(int32_t self, NcclApi* api, NcclTransportOptions options = {});
  ~NcclTransport() override;
  NcclTransport(const NcclTransport&) = delete;
  NcclTransport& operator=(const NcclTransport&) = delete;

  // Leaves the current communicator (aborted if a round failed in it, destroyed otherwise) and joins
  // the one `bootstrap` describes; every peer it lists must call Rebuild with the same bootstrap.
  // INVALID_ARGUMENT for a bad bootstrap or one that does not list self(); FAILED_PRECONDITION for
  // a generation not above the current one; UNAVAILABLE (the attempt aborted, no communicator) when
  // not every rank has joined by `deadline`; CANCELLED after Shutdown.
  absl::Status Rebuild(const NcclBootstrap& bootstrap, absl::Time deadline);

  // Whether a communicator is joined (or being joined) and not aborted; its generation (0: none
  // yet). Neither waits for a round in progress.
  bool connected() const;
  uint64_t generation() const;

  struct OutgoingMessage {
    int32_t peer = 0;
    MessageTag tag;  // tag.sender must be self()
    std::span<const std::byte> payload;
  };
  struct ExpectedMessage {
    int32_t peer = 0;
    MessageTag tag;  // exactly what must arrive; tag.sender must be `peer`
    // Accept any step, layer and micro-batch of tag.kind from `peer` (what an expert worker waits
    // for: it cannot know the attention worker's next step); the received tag is returned.
    bool any_step = false;
  };
  // One round of host payloads: sends every `sends[i]` and receives every `expect[j]` (several per
  // peer are fine: they pair up in order). The received messages come back in `expect`'s order.
  // Errors: INVALID_ARGUMENT naming the field (a peer outside the rank map, a payload above
  // max_message_bytes, a sender that is not self()); FAILED_PRECONDITION without a communicator;
  // INTERNAL for a tag mismatch or a malformed/oversized header (the latter aborts); UNAVAILABLE
  // when the deadline passes or NCCL fails (aborted); CANCELLED after Shutdown.
  absl::StatusOr<std::vector<Message>> Exchange(std::span<const OutgoingMessage> sends,
                                                std::span<const ExpectedMessage> expect, absl::Time deadline);

  // The same round with payloads already in NcclApi buffer memory (device memory for the real API):
  // sends read `data`, receives land in pre-posted `data` of `capacity` bytes. Returns each receive's
  // size. A message larger than its receive's capacity is RESOURCE_EXHAUSTED and aborts.
  struct DeviceSend {
    int32_t peer = 0;
    MessageTag tag;
    const void* data = nullptr;
    size_t bytes = 0;
  };
  struct DeviceReceive {
    int32_t peer = 0;
    MessageTag tag;  // with any_step, replaced by the tag that arrived
    void* data = nullptr;
    size_t capacity = 0;
    bool any_step = false;  // as ExpectedMessage::any_step
  };
  absl::StatusOr<std::vector<size_t>> ExchangeDevice(std::span<const DeviceSend> sends,
                                                     std::span<const DeviceReceive> expect,
                                                     absl::Time deadline);

  // ActivationTransport. Send is a round of one send: it returns when the peer has received it (its
  // ReceiveTagged), or UNAVAILABLE after options.send_timeout, so sender and receiver must run
  // concurrently. ReceiveTagged is a round of one receive from tag.sender. ReceiveAny is
  // UNIMPLEMENTED: NCCL cannot receive from whoever sends first (expert workers that serve rounds
  // from any attention worker need Exchange with the round's known senders). Without a usable
  // communicator both answer UNAVAILABLE, as the seam has it (Exchange says FAILED_PRECONDITION).
  int32_t self() const override { return self_; }
  absl::Status Send(int32_t peer, const MessageTag& tag, std::span<const std::byte> payload) override;
  absl::StatusOr<Message> ReceiveAny(absl::Time deadline) override;
  absl::StatusOr<Message> ReceiveTagged(const MessageTag& tag, absl::Time deadline) override;
  // A round of one receive from `peer` of any message of `kind` (ExpectedMessage::any_step): how an
  // expert worker waits for an attention worker's next dispatch. Errors as ReceiveTagged.
  absl::StatusOr<Message> ReceiveFrom(int32_t peer, MessageKind kind, absl::Time deadline);
  // Announces that a bootstrap of `generation` is on its way: the round or join in progress, and any
  // started later, in a generation below it aborts its communicator and answers UNAVAILABLE at once,
  // until Rebuild joins `generation` (or a later one). For the rendezvous: a worker idle in a
  // receive without a deadline (an expert worker waiting for its next dispatch) holds the transport,
  // and a new bootstrap must preempt it; a join of an older bootstrap still running is given up.
  void Interrupt(uint64_t generation);
  // Aborts the communicator of `generation` if that is the current one: now if no round holds the
  // transport, else the round in progress at its next poll (within max_poll_interval), which answers
  // UNAVAILABLE with `why`; later rounds answer UNAVAILABLE with `why` too, until Rebuild joins a
  // newer generation. A join of `generation` still to come is given up (as Interrupt(generation + 1));
  // an older generation's Abort changes nothing. For the liveness watch
  // (docs/data-plane.md#watching-the-peers): the control plane lost a member, so a round waiting on it must
  // not wait for its deadline.
  void Abort(uint64_t generation, std::string why);
  void Shutdown() override;
  uint64_t dropped_messages() const override;
  DropCounts drop_counts() const override;

 private:
  // A growable NcclApi buffer.
  struct Scratch {
    void* data = nullptr;
    size_t capacity = 0;
  };
  struct Op {
    int rank;
    int32_t peer;
    void* data;  // send: const data, cast
    size_t bytes;
    bool is_send;
  };

  absl::Status EnsureScratch(Scratch& scratch, size_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<int> RankOf(int32_t peer, const std::string& field) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckUsable() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A validated round: headers first (stage 1), then the payloads (stage 2). With `host`, the
  // receives' `data` is null and they land in payload_recv_ (their `capacity` is the size limit).
  absl::StatusOr<std::vector<size_t>> RoundLocked(std::span<const DeviceSend> sends,
                                                  std::vector<DeviceReceive>& expect, bool host,
                                                  absl::Time deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Stage 1: returns the announced sizes. Checks magic and size (aborting on either); the first tag
  // mismatch goes to *mismatch and the round goes on.
  absl::StatusOr<std::vector<size_t>> ExchangeCounts(std::span<const DeviceSend> sends,
                                                     std::span<DeviceReceive> expect, bool host,
                                                     absl::Time deadline, absl::Status* mismatch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Posts `ops` in one group and waits for them.
  absl::Status RunGroup(std::span<const Op> ops, const char* stage, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Wait(std::span<const Op> ops, const char* stage, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Aborts the communicator (if any); `why` goes into later FAILED_PRECONDITION messages.
  void AbortLocked(std::string why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string PeersText() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Why the current generation is interrupted: Abort's `why`, or a newer bootstrap.
  std::string InterruptText() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CountDrop(DropReason reason);

  const int32_t self_;
  NcclApi* const api_;
  const NcclTransportOptions options_;
  std::atomic<bool> shutdown_{false};
  std::atomic<uint64_t> interrupt_below_{0};
  // Mirrors of comm_ != nullptr and generation_ for connected() and generation().
  std::atomic<bool> has_comm_{false};
  std::atomic<uint64_t> published_generation_{0};  // Interrupt(): generations below it are given up
  std::array<std::atomic<uint64_t>, kNumDropReasons> drops_{};

  // Abort(): the generation it aborted and why (never held with mu_ waited for).
  mutable absl::Mutex abort_mu_;
  uint64_t aborted_generation_ ABSL_GUARDED_BY(abort_mu_) = 0;
  std::string abort_why_ ABSL_GUARDED_BY(abort_mu_);

  mutable absl::Mutex mu_;
  std::unique_ptr<NcclComm> comm_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<int32_t> peers_ ABSL_GUARDED_BY(mu_);  // by NCCL rank
  absl::flat_hash_map<int32_t, int> rank_of_ ABSL_GUARDED_BY(mu_);
  std::string broken_ ABSL_GUARDED_BY(mu_);  // why the last communicator was aborted
  Scratch header_send_ ABSL_GUARDED_BY(mu_);
  Scratch header_recv_ ABSL_GUARDED_BY(mu_);
  Scratch payload_send_ ABSL_GUARDED_BY(mu_);
  Scratch payload_recv_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe::transport

#endif  // MOE_COMMON_TRANSPORT_NCCL_NCCL_TRANSPORT_H_
