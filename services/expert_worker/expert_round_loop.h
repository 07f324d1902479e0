// The expert worker's data-plane loop: receives dispatch messages from any attention worker, runs
// them through the ExpertBlock (grouped SwiGLU per expert) and answers the sender with the combine
// message, recording the expert metrics (rounds, rows per layer and expert, compute time, bytes,
// load balance over a window). Same protocol as engine::ExpertServer, which has no metrics.
//
// Thread safety: Start/Drain/Stop from one control thread; counters readable from any thread.
#ifndef MOE_SERVICES_EXPERT_WORKER_EXPERT_ROUND_LOOP_H_
#define MOE_SERVICES_EXPERT_WORKER_EXPERT_ROUND_LOOP_H_

#include <atomic>
#include <cstdint>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/engine/expert_block.h"
#include "common/transport/activation_transport.h"
#include "services/expert_worker/expert_load_window.h"
#include "services/expert_worker/expert_metrics.h"

namespace moe::services {

class ExpertRoundLoop {
 public:
  // None of the pointers is owned; all must outlive Stop(). `metrics` may be null (tests).
  ExpertRoundLoop(const engine::ExpertBlock* block, transport::ActivationTransport* transport,
                  ExpertMetrics* metrics, int64_t num_layers, absl::Duration load_window);
  ~ExpertRoundLoop() { Stop(); }

  void Start();
  // Stops taking new rounds; returns once the round being served (if any) is answered. Later
  // dispatches stay unanswered, so their senders fail their step with UNAVAILABLE at the deadline.
  // Idempotent. Returns the rounds served.
  uint64_t Drain();
  // Drain, then shut the transport down. Idempotent.
  void Stop();

  uint64_t rounds_served() const { return served_.load(); }
  uint64_t rounds_failed() const { return failed_.load(); }

  // Serves one message (the loop body; exposed for tests).
  void ServeOne(const transport::Message& message);

 private:
  void Loop();
  void RefreshBalance(int64_t layer);

  const engine::ExpertBlock* block_;
  transport::ActivationTransport* transport_;
  ExpertMetrics* metrics_;
  ExpertLoadWindow window_;  // loop thread only
  std::thread thread_;
  std::atomic<bool> draining_{false};
  absl::Mutex mu_;
  bool running_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<uint64_t> served_{0};
  std::atomic<uint64_t> failed_{0};
};

}  // namespace moe::services

#endif  // MOE_SERVICES_EXPERT_WORKER_EXPERT_ROUND_LOOP_H_
