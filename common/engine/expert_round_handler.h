// How an expert shard answers one dispatch, whatever data plane carried it: run the shard's
// ExpertCompute, stamp the combine answer with how long this shard held the round (moe_message.h
// version 2) and tell an ExpertRoundObserver (the expert worker's metrics) what was served. The
// caller sends the answer in between, so the same work serves rounds taken with ReceiveAny
// (ExpertShardServer: UCX, loopback) and rounds taken per attention worker (the NCCL links,
// services/expert_worker/nccl_links.h).
//
// A dispatch the block rejects (malformed, or an expert this shard does not host) is answered with
// an empty combine message, so the sender fails its step at once rather than at its deadline; a
// message that is not a dispatch gets no answer.
//
// Thread safety: Handle and Finish may be called from several threads at once (ExpertCompute::Serve
// is thread-safe); the observer is called from one thread at a time (a mutex serializes it).
#ifndef MOE_COMMON_ENGINE_EXPERT_ROUND_HANDLER_H_
#define MOE_COMMON_ENGINE_EXPERT_ROUND_HANDLER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/engine/compute/expert_compute.h"
#include "common/engine/expert_round_observer.h"
#include "common/transport/activation_transport.h"

namespace moe::engine {

class ExpertRoundHandler {
 public:
  // Neither pointer is owned; both must outlive the handler. `observer` may be null.
  ExpertRoundHandler(const ExpertCompute* block, ExpertRoundObserver* observer)
      : block_(block), observer_(observer) {}
  ExpertRoundHandler(const ExpertRoundHandler&) = delete;
  ExpertRoundHandler& operator=(const ExpertRoundHandler&) = delete;

  // One message's answer, between Handle and Finish.
  struct Answer {
    bool reply = false;              // false: not a dispatch, nothing to send
    transport::MessageTag tag;       // the dispatch's (step, layer, micro-batch), kind kCombine
    std::vector<std::byte> payload;  // the combine message, stamped with the expert time
    absl::Status served;             // the block's verdict (not OK: `payload` is an empty message)
    absl::Time start = absl::UnixEpoch();
    absl::Duration compute = absl::ZeroDuration();
    size_t activation_bytes = 0;  // the payload without the stamp (what the observer counts)
    // Finish reads neither `payload` nor `tag`: a caller may move the payload out to send it.
  };

  // Computes the answer to `message` as peer `self`, encoding the payload into `buffer` (one to
  // reuse, e.g. what the previous answer's send left: ExpertCompute::ServeInto). Logs (to stderr) a
  // message it cannot serve.
  Answer Handle(const transport::Message& message, int32_t self, std::vector<std::byte> buffer = {}) const;
  // After the answer was sent (or not: `sent`, OK when there was nothing to send): counts the round
  // and tells the observer.
  void Finish(const transport::Message& message, const Answer& answer, const absl::Status& sent);

  // Dispatches answered with the experts' outputs, and messages that got none.
  uint64_t rounds_served() const { return served_.load(); }
  uint64_t rounds_failed() const { return failed_.load(); }
  // The observer's OnIdle (serialized like the other calls); no-op without an observer.
  void Idle(absl::Time now);

 private:
  // Tells the observer the token rows of each hosted expert in the dispatch.
  void ReportServed(const transport::Message& message, const Answer& answer, uint64_t bytes_sent)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(observer_mu_);

  const ExpertCompute* const block_;
  ExpertRoundObserver* const observer_;
  absl::Mutex observer_mu_;
  std::atomic<uint64_t> served_{0};
  std::atomic<uint64_t> failed_{0};
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_EXPERT_ROUND_HANDLER_H_
