// What an ExpertShardServer tells about the rounds it serves, for whoever keeps statistics (the
// expert worker's Prometheus metrics and load window implement it; embedded mode attaches none).
//
// Thread safety: the server calls every method from its one serving thread (or from the thread
// that calls ServeOne), never concurrently; an implementation that is also read elsewhere (a
// Prometheus scrape) must make that side safe itself.
#ifndef MOE_COMMON_ENGINE_EXPERT_ROUND_OBSERVER_H_
#define MOE_COMMON_ENGINE_EXPERT_ROUND_OBSERVER_H_

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace moe::engine {

// One round answered with the experts' outputs.
struct ServedRound {
  int64_t layer = 0;
  // Token rows computed per hosted expert, indexed by local expert (global id - first expert of
  // the shard): [num hosted experts]; 0 for experts the round did not touch. Valid only during
  // the callback.
  std::span<const uint64_t> rows_per_expert;
  absl::Time start = absl::UnixEpoch();           // when the expert compute began
  absl::Duration compute = absl::ZeroDuration();  // ExpertBlock::Serve, decode to encoded combine
  uint64_t bytes_received = 0;                    // the dispatch payload
  uint64_t bytes_sent = 0;                        // the combine payload; 0 when sending it failed
};

// One message that got no expert output: a malformed dispatch or an expert this shard does not
// host (answered with an empty combine so the sender fails its step at once), or a message that is
// not a dispatch (not answered).
struct FailedRound {
  int64_t layer = 0;
  absl::Status status{};  // why; never OK
  absl::Duration compute = absl::ZeroDuration();
  uint64_t bytes_received = 0;
};

class ExpertRoundObserver {
 public:
  virtual ~ExpertRoundObserver() = default;

  virtual void OnRoundServed(const ServedRound& round) = 0;
  virtual void OnRoundFailed(const FailedRound& round) = 0;
  // The server waited a poll interval without a message; `now` lets windowed statistics age out
  // rounds even when no new ones arrive.
  virtual void OnIdle(absl::Time now) = 0;
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_EXPERT_ROUND_OBSERVER_H_
