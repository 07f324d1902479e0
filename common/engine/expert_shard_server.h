// The data-plane loop of one expert shard: receives dispatch messages from any attention worker
// over an ActivationTransport, runs each through the shard's ExpertCompute (the CPU ExpertBlock or
// the CUDA block: grouped SwiGLU per expert) and answers its sender with the combine message
// carrying the same (step, layer, micro-batch), in arrival order, stamped (moe_message.h version 2)
// with how long this shard held the round, so the attention worker can split its wait into expert
// time and transport. The expert worker process serves over UCX with this; embedded mode serves
// over loopback. Statistics go to an optional ExpertRoundObserver (the expert worker's metrics).
// The per-round work (compute, stamp, observer, and the empty answer to a dispatch the block
// rejects) is ExpertRoundHandler's, shared with the NCCL data plane's links. Answers are encoded
// into one buffer reused from round to round (and sent with SendBuffer, so the loopback hands it
// over and gives back a recycled one), and a served dispatch's payload is recycled to the transport.
//
// Thread safety: Start/Drain/Stop from one control thread (or several: they serialize); counters
// readable from any thread. The observer is called from one thread at a time.
#ifndef MOE_COMMON_ENGINE_EXPERT_SHARD_SERVER_H_
#define MOE_COMMON_ENGINE_EXPERT_SHARD_SERVER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/engine/compute/expert_compute.h"
#include "common/engine/expert_round_handler.h"
#include "common/engine/expert_round_observer.h"
#include "common/transport/activation_transport.h"

namespace moe::engine {

class ExpertShardServer {
 public:
  // None of the pointers is owned; all must outlive Stop(). `observer` may be null.
  ExpertShardServer(const ExpertCompute* block, transport::ActivationTransport* transport,
                    ExpertRoundObserver* observer = nullptr)
      : handler_(block, observer), transport_(transport) {}
  ~ExpertShardServer() { Stop(); }
  ExpertShardServer(const ExpertShardServer&) = delete;
  ExpertShardServer& operator=(const ExpertShardServer&) = delete;

  // Starts the serving thread; no-op while it runs. After Drain it starts serving again; after
  // Stop the transport is shut down and the thread ends at once.
  void Start();
  // Stops taking new rounds; returns once the round being served (if any) is answered and the
  // serving thread has ended (up to one poll interval, 200 ms, when idle). Dispatches that arrive
  // later stay unanswered in the transport, so their senders fail their step with UNAVAILABLE at
  // their deadline. Idempotent. Returns the rounds served.
  uint64_t Drain();
  // Lets the round being served (if any) be answered, then shuts the transport down and joins the
  // serving thread. Idempotent.
  void Stop();

  uint64_t rounds_served() const { return handler_.rounds_served(); }
  // Messages that got no expert output (see FailedRound).
  uint64_t rounds_failed() const { return handler_.rounds_failed(); }

  // Serves one received message exactly as the loop does (for tests, and for callers with their
  // own receive loop).
  void ServeOne(const transport::Message& message) ABSL_LOCKS_EXCLUDED(serve_mu_);

 private:
  void Loop();
  void ServeLocked(const transport::Message& message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(serve_mu_);

  ExpertRoundHandler handler_;
  transport::ActivationTransport* const transport_;

  absl::Mutex control_mu_;
  std::thread thread_ ABSL_GUARDED_BY(control_mu_);
  // Held while one round is served (and while the observer is called), so Stop can let it finish
  // before the transport goes, and the observer never sees two calls at once.
  absl::Mutex serve_mu_;
  // What the last answer's SendBuffer left: the next answer is encoded into it.
  std::vector<std::byte> answer_buffer_ ABSL_GUARDED_BY(serve_mu_);
  std::atomic<bool> draining_{false};
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_EXPERT_SHARD_SERVER_H_
