// ActivationTransport over UCX (docs/data-plane.md#ucx-transport): one ucp_context + ucp_worker per
// endpoint, messages as UCX Active Messages.
//
// Why Active Messages rather than tag matching: ReceiveAny must accept a message of unknown size
// from any peer, and receivers match on the full MessageTag (u64 step, layer, micro-batch, sender),
// which does not fit a 64-bit UCX tag without aliasing. An AM carries the whole MessageTag in its
// header, UCX hands it to our callback together with the size, and for large messages (rendezvous)
// we post ucp_am_recv_data_nbx into a buffer of exactly that size: zero-copy get, no probe loop,
// no aliasing. Matching (ReceiveTagged, stale-step dropping) is then done on our side exactly as in
// loopback/, so both transports behave the same.
//
// Rendezvous: payloads of at least UcxOptions::rndv_threshold bytes are sent with
// UCP_AM_SEND_FLAG_RNDV (the receiver pulls them straight into the message buffer); smaller ones
// let UCX choose (eager over shared memory or TCP).
//
// Progress: a dedicated thread drives ucp_worker_progress. While requests of ours are in flight it
// polls (yielding the core between polls: some rendezvous steps raise no fd event); otherwise,
// after UcxOptions::busy_poll without activity, it sleeps on the worker's event fd, waking on
// network events, on ucp_worker_signal from a caller, or at the latest every 50 ms.
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
// Thread safety: all methods are thread-safe. Send may be called from several threads at once,
// also to the same peer. Only the progress thread calls UCX (UCS_THREAD_MODE_SINGLE, no UCX
// locks): callers post commands to it and wait for their completion, so an endpoint is never
// closed under a concurrent send.
#ifndef MOE_COMMON_TRANSPORT_UCX_UCX_TRANSPORT_H_
#define MOE_COMMON_TRANSPORT_UCX_UCX_TRANSPORT_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <ucp/api/ucp.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/transport/activation_transport.h"

namespace moe::transport {

struct UcxOptions {
  // UCX transports, e.g. "tcp" or "sm,self" or "posix,cma,self". Empty: UCX_TLS from the
  // environment (or UCX's default, "all").
  std::string tls;
  // A Send not completed after this long (a peer that neither answers nor reports an error) is
  // aborted: the endpoint is closed and Send returns UNAVAILABLE.
  absl::Duration send_timeout = absl::Seconds(30);
  // Payloads of at least this many bytes force rendezvous; 0 leaves the choice to UCX for all.
  size_t rndv_threshold = 256 * 1024;
  // How long the progress thread keeps polling after the last activity before sleeping on the
  // worker's event fd. Longer: lower latency under steady traffic, more CPU when idle.
  // Default 0: on a shared machine a spinning thread slows the peers it waits for (measured with
  // bench/transport); raise it on dedicated cores.
  absl::Duration busy_poll = absl::ZeroDuration();
  // UCX keepalive interval, which bounds how fast a silently dead peer is noticed. Ignored when
  // UCX_KEEPALIVE_INTERVAL is set in the environment.
  absl::Duration keepalive_interval = absl::Seconds(1);
  // Time Shutdown() spends telling each peer goodbye.
  absl::Duration goodbye_timeout = absl::Milliseconds(500);
};

class UcxTransport final : public ActivationTransport {
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

  // Creates the endpoint for sending to `peer` from its WorkerAddress(). Replaces an existing
  // endpoint (a restarted peer) and clears a recorded failure of `peer`. INVALID_ARGUMENT for an
  // address not framed by WorkerAddress() or a negative peer; the UCX error otherwise.
  absl::Status Connect(int32_t peer, std::string_view address);

  // Closes the endpoint to `peer` (without telling it); later Sends to it are UNAVAILABLE.
  // NOT_FOUND when `peer` is not connected.
  absl::Status Disconnect(int32_t peer);

  // The UCX endpoint configuration used towards `peer` (lanes and transports, as printed by
  // ucp_ep_print_info), e.g. to check that shared memory is really used. NOT_FOUND if unconnected.
  absl::StatusOr<std::string> DescribeEndpoint(int32_t peer);

  // ActivationTransport.
  int32_t self() const override { return self_; }
  absl::Status Send(int32_t peer, const MessageTag& tag, std::span<const std::byte> payload) override;
  absl::StatusOr<Message> ReceiveAny(absl::Time deadline) override;
  absl::StatusOr<Message> ReceiveTagged(const MessageTag& tag, absl::Time deadline) override;
  void Shutdown() override;
  uint64_t dropped_messages() const override;

  // Messages with a header we cannot parse (never delivered).
  uint64_t malformed_messages() const;

 private:
  struct SendOp;
  // A rendezvous receive in flight: the message being filled.
  struct RndvReceive {
    UcxTransport* transport;
    Message message;
  };

  UcxTransport(int32_t self, const UcxOptions& options) : self_(self), options_(options) {}
  absl::Status Init();

  // Runs `fn` on the progress thread (the only thread that touches UCX after Init) and waits for
  // it. CANCELLED once the progress thread has stopped. `fn` never blocks for long: UCX calls are
  // non-blocking and its own waits are bounded.
  absl::Status RunOnProgressThread(std::function<absl::Status()> fn);
  void ProgressLoop();
  bool RunPostedCommands();

  // Progress thread only.
  void CloseEndpointNow(ucp_ep_h ep);
  void CloseFailedEndpoints();
  void SayGoodbyeAndCloseAll();

  // Records that `peer` is gone and wakes waiters. Any thread (takes mu_).
  void MarkFailed(int32_t peer, absl::Status why);
  void Deliver(Message message);

  // UCX callbacks (static trampolines; arg/user_data is this or the operation).
  static ucs_status_t OnData(void* arg, const void* header, size_t header_length, void* data, size_t length,
                             const ucp_am_recv_param_t* param);
  static ucs_status_t OnGoodbye(void* arg, const void* header, size_t header_length, void* data,
                                size_t length, const ucp_am_recv_param_t* param);
  static void OnSendDone(void* request, ucs_status_t status, void* user_data);
  static void OnRndvDone(void* request, ucs_status_t status, size_t length, void* user_data);
  static void OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status);

  const int32_t self_;
  const UcxOptions options_;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  int epoll_fd_ = -1;
  std::string address_;
  // Random per transport object, carried in WorkerAddress() and in goodbyes, so a late goodbye from
  // a peer's previous incarnation cannot mark its restarted successor as failed.
  uint64_t instance_ = 0;
  // The goodbye active message's header (sender, instance). A member, not a local: UCX may send it
  // after ucp_am_send_nbx returns, so it must outlive the request.
  std::array<uint8_t, 16> goodbye_header_{};
  std::thread progress_thread_;

  // Progress thread only (UCX runs in UCS_THREAD_MODE_SINGLE).
  absl::flat_hash_map<int32_t, ucp_ep_h> endpoints_;
  absl::flat_hash_map<int32_t, uint64_t> peer_instances_;  // progress thread only, like endpoints_
  std::vector<ucp_ep_h> endpoints_to_close_;               // failed inside a callback, closed after it
  int ops_in_flight_ = 0;  // our send and rendezvous-receive requests not yet completed

  // Commands for the progress thread.
  absl::Mutex commands_mu_;
  std::deque<std::function<void()>> commands_ ABSL_GUARDED_BY(commands_mu_);
  bool progress_stopped_ ABSL_GUARDED_BY(commands_mu_) = false;
  std::atomic<bool> has_commands_{false};
  std::atomic<bool> stop_progress_{false};

  mutable absl::Mutex mu_;
  absl::flat_hash_map<int32_t, absl::Status> failed_ ABSL_GUARDED_BY(mu_);
  std::deque<Message> inbox_ ABSL_GUARDED_BY(mu_);
  // Rendezvous receives in flight, owned here until their callback (or the destructor).
  absl::flat_hash_map<RndvReceive*, std::unique_ptr<RndvReceive>> rndv_in_flight_ ABSL_GUARDED_BY(mu_);
  uint64_t failure_generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t malformed_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace moe::transport

#endif  // MOE_COMMON_TRANSPORT_UCX_UCX_TRANSPORT_H_
