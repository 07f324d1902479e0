// The send path of UcxTransport: one data Active Message per Send, its header the whole
// MessageTag (ucx_wire.h). Payloads of at least UcxOptions::rndv_threshold bytes are sent with
// UCP_AM_SEND_FLAG_RNDV (the receiver pulls them straight into its buffer), smaller ones with
// UCP_AM_SEND_FLAG_EAGER (UCX would pick rendezvous for some). Send returns once UCX no longer reads the
// payload. A send not completed within UcxOptions::send_timeout (a peer that neither takes the message nor
// fails) marks the peer failed and force-closes its endpoint, which makes UCX complete the request with an
// error: nothing waits forever.
//
// Thread safety: Send from any number of threads at once, also to the same peer.
#ifndef MOE_COMMON_TRANSPORT_UCX_UCX_SENDER_H_
#define MOE_COMMON_TRANSPORT_UCX_UCX_SENDER_H_

#include <cstddef>
#include <cstdint>
#include <span>

#include <ucp/api/ucp.h>

#include "absl/status/status.h"
#include "common/transport/activation_transport.h"
#include "common/transport/tagged_inbox.h"
#include "common/transport/ucx/ucx_options.h"
#include "common/transport/ucx/ucx_peer_table.h"
#include "common/transport/ucx/ucx_progress_thread.h"

namespace moe::transport::ucx {

class UcxSender {
 public:
  // `inbox` holds the transport's shutdown and peer failures; `peers` is used on the progress
  // thread only. All must outlive this object.
  UcxSender(const UcxOptions& options, TaggedInbox* inbox, UcxPeerTable* peers, UcxProgressThread* progress)
      : options_(options), inbox_(inbox), peers_(peers), progress_(progress) {}

  UcxSender(const UcxSender&) = delete;
  UcxSender& operator=(const UcxSender&) = delete;

  // As ActivationTransport::Send, with tag.sender already checked: CANCELLED after shutdown,
  // the recorded failure of `peer` (UNAVAILABLE), UNAVAILABLE for an unconnected peer or a send
  // that failed or timed out because of the peer, another UCX error as ucx_status.h maps it.
  absl::Status Send(int32_t peer, const MessageTag& tag, std::span<const std::byte> payload);

 private:
  struct SendOp;
  static void OnSendDone(void* request, ucs_status_t status, void* user_data);

  const UcxOptions& options_;
  TaggedInbox* const inbox_;
  UcxPeerTable* const peers_;
  UcxProgressThread* const progress_;
};

}  // namespace moe::transport::ucx

#endif  // MOE_COMMON_TRANSPORT_UCX_UCX_SENDER_H_
