// UcxTransport's options (ucx_transport.h), in their own header so the transport's private pieces
// can read them without the public class.
#ifndef MOE_COMMON_TRANSPORT_UCX_UCX_OPTIONS_H_
#define MOE_COMMON_TRANSPORT_UCX_UCX_OPTIONS_H_

#include <cstddef>
#include <string>

#include "absl/time/time.h"
#include "common/transport/tagged_inbox.h"

namespace moe::transport {

struct UcxOptions {
  // UCX transports, e.g. "tcp" or "sm,self" or "posix,cma,self". Empty: UCX_TLS from the
  // environment (or UCX's default, "all").
  std::string tls;
  // A Send not completed after this long (a peer that neither answers nor reports an error) is
  // aborted: the endpoint is closed and Send returns UNAVAILABLE.
  absl::Duration send_timeout = absl::Seconds(30);
  // Payloads of at least this many bytes force rendezvous, smaller ones eager; 0 leaves the choice
  // to UCX for all.
  size_t rndv_threshold = 256 * 1024;
  // How long the progress thread keeps polling after the last activity before sleeping on the
  // worker's event fd. Longer: lower latency under steady traffic, more CPU when idle.
  // Default 0: on a shared machine a spinning thread slows the peers it waits for (measured with
  // bench/transport); raise it on dedicated cores.
  absl::Duration busy_poll = absl::ZeroDuration();
  // How long a thread waiting for a message (ReceiveTagged, ReceiveAny) progresses the UCX worker
  // itself before it sleeps: a message arriving within it is received without waking another
  // thread (docs/data-plane.md#ucx-transport). It bounds the CPU a wait burns, once per wait: at
  // most kMaxPollSpin. Default 0 (off, the progress thread receives): on a shared, oversubscribed
  // machine a spinning waiter takes the core its peer needs (measured with bench/transport); set
  // it on dedicated cores.
  absl::Duration poll_spin = absl::ZeroDuration();
  // After poll_spin, a waiting receiver sleeps on the UCX worker's event fd itself and receives on
  // its own thread, rather than sleeping until the progress thread hands it the message: one
  // wake-up per message instead of two, without spinning (docs/data-plane.md#small-message-latency).
  bool receiver_progress = true;
  static constexpr absl::Duration kMaxPollSpin = absl::Milliseconds(10);
  // UCX keepalive interval, which bounds how fast a silently dead peer is noticed. Ignored when
  // UCX_KEEPALIVE_INTERVAL is set in the environment.
  absl::Duration keepalive_interval = absl::Seconds(1);
  // Time Shutdown() spends telling each peer goodbye.
  absl::Duration goodbye_timeout = absl::Milliseconds(500);
  // Per-sender bounds of the receive side: queued messages and the step window
  // (docs/data-plane.md#admission-and-bounds).
  InboxLimits inbox;
};

}  // namespace moe::transport

#endif  // MOE_COMMON_TRANSPORT_UCX_UCX_OPTIONS_H_
