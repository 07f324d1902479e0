// The adaptive receive spin (docs/data-plane.md#small-message-latency): how long a receiver with
// nothing to take should poll the network on its own thread before it sleeps, decided from how long
// its recent waits took, like glibc's adaptive mutex or Linux's busy polling.
//
// A spin pays only when the message comes within it (no wake-up at all); one that comes later
// costs the spin's CPU, which on a crowded machine may be the core the peer needs, and a wake-up
// anyway. So the policy spins only while history says an answer is about to come:
//
//  - it keeps an estimate of this receiver's waits: a moving average (weight 1/history_weight) of
//    how long each wait took from its start until something arrived (or its deadline passed), each
//    sample clipped at 4 x spin_below so that one long wait (a step boundary, an idle peer) fades
//    within a few waits;
//  - while the estimate is below spin_below, the next wait spins multiplier x estimate, at least
//    min_spin and at most max_spin; above it (TCP round trips longer than a spin could cover, an
//    expert busy computing), it does not spin;
//  - after failures_before_pause spins in a row that the message missed (a crowded machine, a peer
//    slower than the estimate), it pauses: the next first_pause waits do not spin; then one spin
//    probes, and if that misses too the pause doubles (up to max_pause waits); a spin that catches
//    its message ends the pause cycle.
//
// The decision is a pure function of the history passed to Record (no clock, no randomness), so
// two policies fed the same waits decide the same spins; the caller measures the waits.
//
// Thread safety: none; the owner serializes calls (TaggedInbox holds its mutex).
#ifndef MOE_COMMON_TRANSPORT_ADAPTIVE_SPIN_H_
#define MOE_COMMON_TRANSPORT_ADAPTIVE_SPIN_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace moe::transport {

struct AdaptiveSpinConfig {
  // The longest spin (and the first wait's, before there is any history).
  absl::Duration max_spin = absl::Microseconds(50);
  // The shortest spin, when the estimate is tiny.
  absl::Duration min_spin = absl::Microseconds(5);
  // No spin while the estimate of the waits is at or above this.
  absl::Duration spin_below = absl::Microseconds(100);
  // A spin lasts this many times the estimate (within [min_spin, max_spin]).
  int multiplier = 2;
  // Weight of a new wait in the estimate: 1 / history_weight.
  int history_weight = 4;
  // Missed spins in a row that start a pause, and the pause's first and largest length in waits.
  int failures_before_pause = 3;
  int first_pause = 8;
  int max_pause = 256;

  // INVALID_ARGUMENT naming the field when the values are not usable: spins must be positive with
  // min_spin <= max_spin, spin_below positive, the counts at least 1 and first_pause <= max_pause.
  absl::Status Validate() const;
};

class AdaptiveSpin {
 public:
  // `config` must be valid (Validate).
  explicit AdaptiveSpin(const AdaptiveSpinConfig& config = {});

  // How long the next wait should spin before it sleeps; zero: not at all.
  absl::Duration NextSpin() const;

  // Feeds one wait's outcome: it spun for `spun` (what NextSpin said; zero if it did not spin),
  // lasted `waited` from its start until a message arrived or its deadline passed, and `caught`
  // says whether a message arrived during the spin.
  void Record(absl::Duration spun, absl::Duration waited, bool caught);

  // The current estimate of a wait (starts at max_spin / multiplier, so the first wait spins
  // max_spin).
  absl::Duration estimate() const { return absl::Nanoseconds(estimate_ns_); }
  // Waits left in the current pause (0: not pausing).
  int pause_left() const { return pause_left_; }

 private:
  const AdaptiveSpinConfig config_;
  int64_t estimate_ns_;
  int failures_ = 0;    // missed spins in a row
  int pause_left_ = 0;  // waits that still do not spin
  int next_pause_;      // length of the next pause
};

}  // namespace moe::transport

#endif  // MOE_COMMON_TRANSPORT_ADAPTIVE_SPIN_H_
