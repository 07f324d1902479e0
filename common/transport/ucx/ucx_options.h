// UcxTransport's options (ucx_transport.h), in their own header so the transport's private pieces
// can read them without the public class.
#ifndef MOE_COMMON_TRANSPORT_UCX_UCX_OPTIONS_H_
#define MOE_COMMON_TRANSPORT_UCX_UCX_OPTIONS_H_

#include <cstddef>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
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
  // itself before it sleeps: a message arriving within it is received without waking any thread
  // (docs/data-plane.md#small-message-latency).
  //  - nullopt (the default): adaptive. Each wait spins only as long as the transport's recent
  //    waits say an answer is about to come (transport::AdaptiveSpin with its default config: at
  //    most 50 us, none while waits take 100 us or more, paused while spins keep missing), so
  //    it does not spin for answers that take longer (slow TCP round trips, a peer that computes)
  //    nor keep spinning where spins miss (a crowded machine).
  //  - a positive duration: that fixed spin on every wait, at most kMaxPollSpin. It pays over
  //    shared memory with cores to spare; over TCP and on a crowded machine it costs.
  //  - zero: never spin.
  std::optional<absl::Duration> poll_spin;
  // After its spin, a waiting receiver sleeps on the UCX worker's event fd itself and receives on
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

// Parses the services' --ucx_poll_spin_us value into UcxOptions::poll_spin: "auto" is adaptive
// (nullopt), an integer in [0, 10000] (kMaxPollSpin) that many microseconds, 0 never.
// INVALID_ARGUMENT naming `flag` otherwise.
absl::StatusOr<std::optional<absl::Duration>> ParsePollSpinFlag(absl::string_view value,
                                                                absl::string_view flag);

}  // namespace moe::transport

#endif  // MOE_COMMON_TRANSPORT_UCX_UCX_OPTIONS_H_
