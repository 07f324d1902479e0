// How a UcxTransport learns that a peer is gone, and tells its peers that it goes
// (docs/data-plane.md). Three ways in, all ending in TaggedInbox::MarkPeerFailed (so Send to the
// peer and ReceiveTagged from it return UNAVAILABLE naming it) and the endpoint closed:
//  - UCX fails the endpoint (UCP_ERR_HANDLING_MODE_PEER: connection reset, keepalive timeout):
//    OnEndpointError, called by UcxPeerTable.
//  - The peer says goodbye on shutdown (kGoodbyeAmId), carrying its incarnation: a goodbye from an
//    incarnation we are no longer connected to (a restarted peer's predecessor) is ignored.
//  - A send times out or a rendezvous receive fails (UcxSender, UcxAmReceiver mark it directly).
//
// Thread safety: the progress thread only (handlers and SayGoodbyeAndCloseAll run there).
#ifndef MOE_COMMON_TRANSPORT_UCX_UCX_PEER_FAILURES_H_
#define MOE_COMMON_TRANSPORT_UCX_UCX_PEER_FAILURES_H_

#include <cstddef>
#include <cstdint>

#include <ucp/api/ucp.h>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/transport/tagged_inbox.h"
#include "common/transport/ucx/ucx_am_receiver.h"
#include "common/transport/ucx/ucx_peer_table.h"
#include "common/transport/ucx/ucx_wire.h"
#include "common/transport/ucx/ucx_worker.h"

namespace moe::transport::ucx {

class UcxPeerFailures {
 public:
  // `self`/`instance` identify this transport in its goodbyes. `receiver` counts malformed
  // goodbyes. All pointers must outlive this object; `peers` may be set later (set_peers), before
  // the progress thread starts.
  UcxPeerFailures(int32_t self, uint64_t instance, UcxWorker* worker, TaggedInbox* inbox,
                  UcxAmReceiver* receiver)
      : goodbye_(EncodeGoodbye(Goodbye{self, instance})),
        worker_(worker),
        inbox_(inbox),
        receiver_(receiver) {}

  UcxPeerFailures(const UcxPeerFailures&) = delete;
  UcxPeerFailures& operator=(const UcxPeerFailures&) = delete;

  void set_peers(UcxPeerTable* peers) { peers_ = peers; }
  // Registers the goodbye handler (kGoodbyeAmId) on the worker.
  absl::Status Register();

  // UCX failed the endpoint to `peer` (UcxPeerTable's callback; the table closes the endpoint).
  void OnEndpointError(int32_t peer, ucs_status_t status);

  // Sends every connected peer a goodbye (eager), waits up to `timeout` in all for them to go out,
  // then closes every endpoint.
  void SayGoodbyeAndCloseAll(absl::Duration timeout);

 private:
  static ucs_status_t OnGoodbye(void* arg, const void* header, size_t header_length, void* data,
                                size_t length, const ucp_am_recv_param_t* param);

  // A member, not a local: UCX may send it after ucp_am_send_nbx returns, so it must outlive the
  // request.
  const GoodbyeBytes goodbye_;
  UcxWorker* const worker_;
  TaggedInbox* const inbox_;
  UcxAmReceiver* const receiver_;
  UcxPeerTable* peers_ = nullptr;
};

}  // namespace moe::transport::ucx

#endif  // MOE_COMMON_TRANSPORT_UCX_UCX_PEER_FAILURES_H_
