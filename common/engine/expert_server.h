// Serves dispatch messages for one ExpertBlock over an ActivationTransport: each message is
// answered to its sender with a combine message carrying the same (step, layer, micro-batch), in
// arrival order. Used by the expert worker service and by embedded mode (over loopback).
#ifndef MOE_COMMON_ENGINE_EXPERT_SERVER_H_
#define MOE_COMMON_ENGINE_EXPERT_SERVER_H_

#include <atomic>
#include <thread>

#include "common/engine/expert_block.h"
#include "common/transport/activation_transport.h"

namespace moe::engine {

class ExpertServer {
 public:
  // Neither pointer is owned; both must outlive Stop().
  ExpertServer(const ExpertBlock* block, transport::ActivationTransport* transport)
      : block_(block), transport_(transport) {}
  ~ExpertServer() { Stop(); }

  void Start();
  // Shuts the transport down and joins the serving thread. Idempotent.
  void Stop();

  uint64_t messages_served() const { return served_.load(); }
  uint64_t messages_failed() const { return failed_.load(); }

  // Serves one received message (exposed for tests and for callers with their own loop).
  void ServeOne(const transport::Message& message);

 private:
  void Loop();

  const ExpertBlock* block_;
  transport::ActivationTransport* transport_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> served_{0};
  std::atomic<uint64_t> failed_{0};
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_EXPERT_SERVER_H_
