// ActivationTransport over UCX (docs/data-plane.md#ucx-transport): one ucp_context + ucp_worker per
// endpoint, messages as UCX Active Messages.
//
// Why Active Messages rather than tag matching: ReceiveAny must accept a message of unknown size
// from any peer, and receivers match on the full MessageTag (u64 step, layer, micro-batch, sender),
// which does not fit a 64-bit UCX tag without aliasing. An AM carries the whole MessageTag in its
// header, UCX hands it to our callback together with the size, and for large messages (rendezvous)
// we post ucp_am_recv_data_nbx into a buffer of exactly that size: zero-copy get, no probe loop,
// no aliasing. Matching (ReceiveTagged, stale-step dropping) is then done on our side by the
// TaggedInbox that loopback/ uses too (tagged_inbox.h), so both transports behave the same.
//
// Rendezvous: payloads of at least UcxOptions::rndv_threshold bytes are sent with
// UCP_AM_SEND_FLAG_RNDV (the receiver pulls them straight into the message buffer); smaller ones
// are sent eager (UCX 1.13 would pick rendezvous for 32 KiB over shared memory, whose handshake
// costs more round trips than the copy saves at that size).
//
// Progress: a dedicated thread drives ucp_worker_progress. While requests of ours are in flight it
// polls (yielding the core between polls: some rendezvous steps raise no fd event); otherwise,
// after UcxOptions::busy_poll without activity, it sleeps on the worker's event fd, waking on
// network events, on ucp_worker_signal from a caller, or at the latest every 50 ms. While a
// receiver waits (UcxOptions::receiver_progress, poll_spin) that receiver drives the worker instead,
// sleeping on the event fd itself, so a message wakes only the thread that wants it
// (docs/data-plane.md#small-message-latency).
//
// Admission (docs/data-plane.md#admission-and-bounds): an Active Message does not identify the
// endpoint it came from, so the receiver admits each peer explicitly: Admit(peer) makes a random
// 128-bit secret that the peer must carry in every message (handed to it over the mTLS control
// plane, never over UCX), and bounds that peer's message size; messages from senders not admitted,
// with another secret, oversized, beyond the per-sender queue bound or outside the step window are
// dropped before their payload is received, and counted by reason (drop_counts()). Connect()
// takes the secret the peer made for us.
//
// Failures: endpoints use UCP_ERR_HANDLING_MODE_PEER, so a dead peer (connection reset, keepalive
// timeout) fails its endpoint; an endpoint being shut down (Shutdown/destructor) also tells every
// connected peer goodbye so they fail at once. After that, Send to the peer and ReceiveTagged from
// it return UNAVAILABLE naming the peer (messages already received stay receivable). ReceiveAny is
// not affected by one peer's failure: an expert worker keeps serving the others. A Send that does
// not complete within UcxOptions::send_timeout force-closes the endpoint and returns UNAVAILABLE:
// nothing waits forever. Connect() again (a restarted peer's new address) clears the failure.
//
// Transports: UCX_TLS from the environment is honoured unless UcxOptions::tls is set; on one
// machine shared memory (posix/sysv/cma) and TCP, RDMA (rc/ud/dc) where a device is present.
//
// Files, one job each: ucx_worker (context and worker setup), ucx_wire (headers and address
// framing), ucx_peer_table (endpoints per peer), ucx_sender (send path), ucx_am_receiver (receive
// path), ucx_peer_failures (endpoint errors and goodbyes), ucx_progress_thread (the thread that
// drives UCX); this file composes them.
//
// Thread safety: all methods are thread-safe. Send may be called from several threads at once,
// also to the same peer. UCX is called by one thread at a time (UCS_THREAD_MODE_SERIALIZED, under
// UcxProgressThread's lock): the progress thread, or on the fast path the caller itself (Send when
// the progress thread is asleep; a receiver spinning (UcxOptions::poll_spin, adaptive by default)
// progresses the worker while it waits), so an endpoint is never closed under a concurrent send.
#ifndef MOE_COMMON_TRANSPORT_UCX_UCX_TRANSPORT_H_
#define MOE_COMMON_TRANSPORT_UCX_UCX_TRANSPORT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/transport/activation_transport.h"
#include "common/transport/inbox_transport.h"
#include "common/transport/ucx/ucx_options.h"

namespace moe::transport {
namespace ucx {
class UcxAmReceiver;
class UcxPeerFailures;
class UcxPeerTable;
class UcxProgressThread;
class UcxSender;
class UcxWorker;
}  // namespace ucx

// Bytes of the secret UcxTransport::Admit returns and Connect takes.
inline constexpr size_t kDataPlaneSecretBytes = 16;

class UcxTransport final : public InboxTransport {
 public:
  // Creates the UCX context, worker and progress thread for peer id `self` (>= 0).
  static absl::StatusOr<std::unique_ptr<UcxTransport>> Create(int32_t self, const UcxOptions& options = {});
  // Shuts down (telling peers goodbye), stops the progress thread, releases UCX.
  ~UcxTransport() override;

  UcxTransport(const UcxTransport&) = delete;
  UcxTransport& operator=(const UcxTransport&) = delete;

  // The opaque worker address peers pass to Connect (exchanged over gRPC control): UCX's address
  // blob framed with a magic and its length, so a wrong or truncated string is rejected.
  std::string WorkerAddress() const { return address_; }

  // Admits data messages from `peer` (>= 0) of at most `max_message_bytes`, and returns the secret
  // (kDataPlaneSecretBytes random bytes) the peer must carry in them: hand it to the peer over the
  // authenticated control plane, for its Connect. A new admission replaces the previous one (the
  // old secret stops working) and forgets the peer's queued messages and step window (a restarted
  // peer starts its steps over).
  absl::StatusOr<std::string> Admit(int32_t peer, size_t max_message_bytes);
  // Stops accepting messages from `peer`.
  void Revoke(int32_t peer);

  // Creates the endpoint for sending to `peer` from its WorkerAddress(); `secret` is what the peer's
  // Admit returned for us, carried in every message to it. Replaces an existing endpoint (a
  // restarted peer) and clears a recorded failure of `peer`. INVALID_ARGUMENT naming the field for
  // a negative peer, a secret of the wrong size, or an address not framed by WorkerAddress() (too
  // short or long, bad magic, length or checksum, or a UCX header unlike ours), so garbage never
  // reaches UCX's address parser; the UCX error otherwise.
  absl::Status Connect(int32_t peer, std::string_view address, std::string_view secret);

  // Closes the endpoint to `peer` (without telling it); later Sends to it are UNAVAILABLE.
  // NOT_FOUND when `peer` is not connected.
  absl::Status Disconnect(int32_t peer);

  // The UCX endpoint configuration used towards `peer` (lanes and transports, as printed by
  // ucp_ep_print_info), e.g. to check that shared memory is really used. NOT_FOUND if unconnected.
  absl::StatusOr<std::string> DescribeEndpoint(int32_t peer);

  // ActivationTransport (receiving: InboxTransport).
  absl::Status Send(int32_t peer, const MessageTag& tag, std::span<const std::byte> payload) override;
  void Shutdown() override;

  // Messages with a header we cannot parse (never delivered).
  uint64_t malformed_messages() const;

 private:
  UcxTransport(int32_t self, const UcxOptions& options);
  absl::Status Init();

  const UcxOptions options_;
  // Random per transport object, carried in WorkerAddress() and in goodbyes, so a late goodbye from
  // a peer's previous incarnation cannot mark its restarted successor as failed.
  uint64_t instance_ = 0;
  std::string address_;
  // The pieces, one job each (see their headers); they share inbox() for received messages,
  // shutdown and peer failures. The worker is destroyed first, in the destructor, so no UCX
  // callback can reach a piece that is gone.
  std::unique_ptr<ucx::UcxWorker> worker_;
  std::unique_ptr<ucx::UcxAmReceiver> receiver_;
  std::unique_ptr<ucx::UcxPeerFailures> failures_;
  std::unique_ptr<ucx::UcxPeerTable> peers_;  // progress thread only
  std::unique_ptr<ucx::UcxProgressThread> progress_;
  std::unique_ptr<ucx::UcxSender> sender_;
};

}  // namespace moe::transport

#endif  // MOE_COMMON_TRANSPORT_UCX_UCX_TRANSPORT_H_
