// The receive path of UcxTransport's data messages: the Active Message handler that decodes the
// header (ucx_wire.h), admits the message (below) and delivers it into the transport's TaggedInbox.
//
// Admission (docs/data-plane.md#admission-and-bounds): a UCX Active Message does not say which
// endpoint sent it, and the sender id in our header is the sender's claim. So every admitted peer
// has a secret that this receiver made (Admit) and handed to it over the authenticated control
// plane; a message is accepted only if its claimed sender is admitted and its header carries that
// sender's secret (compared in constant time), its size is at most the sender's bound, and the
// inbox would queue it (TaggedInbox::Screen: per-sender queue bound and step window, counting
// rendezvous receives in flight). Everything else is dropped and counted by reason before any
// payload is copied or pulled. Eager messages
// are copied out of UCX's buffer at once; for rendezvous ones it posts ucp_am_recv_data_nbx into
// a buffer of exactly the announced size (zero-copy get) and delivers when that completes. A
// rendezvous receive that fails (the sender died mid-transfer) drops the partial message and marks
// the sender failed in the inbox.
//
// Thread safety: the handlers run on the progress thread; Admit, Revoke and malformed_messages()
// from any thread.
// The object must outlive every request it posted: destroy it only after the worker is destroyed.
#ifndef MOE_COMMON_TRANSPORT_UCX_UCX_AM_RECEIVER_H_
#define MOE_COMMON_TRANSPORT_UCX_UCX_AM_RECEIVER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>

#include <ucp/api/ucp.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/transport/activation_transport.h"
#include "common/transport/tagged_inbox.h"
#include "common/transport/ucx/ucx_progress_thread.h"
#include "common/transport/ucx/ucx_wire.h"
#include "common/transport/ucx/ucx_worker.h"

namespace moe::transport::ucx {

class UcxAmReceiver {
 public:
  // `progress` is set later (it starts after the handlers are registered) with set_progress.
  UcxAmReceiver(UcxWorker* worker, TaggedInbox* inbox) : worker_(worker), inbox_(inbox) {}

  UcxAmReceiver(const UcxAmReceiver&) = delete;
  UcxAmReceiver& operator=(const UcxAmReceiver&) = delete;

  // Registers the data message handler (kDataAmId) on the worker.
  absl::Status Register();
  // The thread whose ops-in-flight count tracks our rendezvous receives; set before it starts.
  void set_progress(UcxProgressThread* progress) { progress_ = progress; }

  // Accepts data messages from `peer` that carry `secret` and are at most `max_message_bytes`
  // long, replacing an earlier admission of `peer` (its old secret no longer works).
  void Admit(int32_t peer, const PeerSecret& secret, size_t max_message_bytes);
  // Stops accepting messages from `peer`.
  void Revoke(int32_t peer);

  // Messages with a header we cannot parse (never delivered), data or goodbye.
  uint64_t malformed_messages() const {
    return inbox_->drop_counts()[static_cast<int>(DropReason::kMalformed)];
  }
  void CountMalformed() { inbox_->CountDrop(DropReason::kMalformed); }

 private:
  // A rendezvous receive in flight: the message being filled.
  struct RndvReceive {
    UcxAmReceiver* receiver;
    Message message;
  };
  struct Admission {
    PeerSecret secret;
    size_t max_message_bytes;
    size_t rndv_in_flight = 0;  // rendezvous receives from this peer not yet delivered
  };

  // The reason to drop a message from `tag.sender` carrying `secret` of `length` bytes; nullopt to
  // accept it. On acceptance of a rendezvous message, counts it in flight for its sender.
  std::optional<DropReason> AdmitMessage(const MessageTag& tag, const PeerSecret& secret, size_t length,
                                         bool rndv);

  static ucs_status_t OnData(void* arg, const void* header, size_t header_length, void* data, size_t length,
                             const ucp_am_recv_param_t* param);
  static void OnRndvDone(void* request, ucs_status_t status, size_t length, void* user_data);

  UcxWorker* const worker_;
  TaggedInbox* const inbox_;
  UcxProgressThread* progress_ = nullptr;

  absl::Mutex mu_;
  absl::flat_hash_map<int32_t, Admission> admitted_ ABSL_GUARDED_BY(mu_);
  // Rendezvous receives in flight, owned here until their callback (or the destructor).
  absl::flat_hash_map<RndvReceive*, std::unique_ptr<RndvReceive>> rndv_in_flight_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe::transport::ucx

#endif  // MOE_COMMON_TRANSPORT_UCX_UCX_AM_RECEIVER_H_
