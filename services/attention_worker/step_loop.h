// The attention worker's step loop: the one thread that owns the Engine (which is not thread-safe).
// Generate handlers Submit requests and Cancel them from gRPC threads; both are queued and applied
// by the loop between steps. The loop runs Step() while there is work and routes each TokenEvent to
// its GenerateStream.
//
// Expert workers: the loop steps only while `ready()` (every expert shard has a connected worker). A step
// whose requests end with an UNAVAILABLE data-plane error calls `on_data_plane_failure()`; while not ready,
// new requests are refused with UNAVAILABLE and the requests held are cancelled in the engine (freeing their
// KV blocks) and end with UNAVAILABLE, so nothing waits for an expert worker.
//
// Thread safety: Submit, Cancel and Load are thread-safe; Start/Stop from one control thread.
#ifndef MOE_SERVICES_ATTENTION_WORKER_STEP_LOOP_H_
#define MOE_SERVICES_ATTENTION_WORKER_STEP_LOOP_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "common/engine/engine.h"
#include "moe/v1/attention.pb.h"
#include "services/attention_worker/attention_metrics.h"
#include "services/attention_worker/generate_stream.h"

namespace moe::services {

struct StepLoopHooks {
  std::function<bool()> ready;                  // may be called often; must be cheap
  std::function<void()> on_data_plane_failure;  // called from the loop thread
};

class StepLoop {
 public:
  // `engine` is owned by the loop from Start on; `metrics` may be null. `rank` is reported by Load.
  StepLoop(std::unique_ptr<engine::Engine> engine, int rank, StepLoopHooks hooks, AttentionMetrics* metrics);
  ~StepLoop() { Stop(); }

  void Start();
  // Ends every open stream with UNAVAILABLE ("shutting down") and joins the loop. Idempotent.
  void Stop();

  // Queues `request` for `stream`. Errors from Engine::AddRequest end the stream with the same
  // code (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ALREADY_EXISTS).
  void Submit(std::shared_ptr<GenerateStream> stream, engine::GenerationRequest request);
  void Cancel(const std::string& request_id);
  // Wakes the loop (e.g. readiness changed).
  void Wake();

  // The load after the last step (published by the loop). `ready` is hooks.ready().
  v1::WorkerLoad Load() const;

 private:
  struct Command {
    std::shared_ptr<GenerateStream> stream;  // null for a cancel
    engine::GenerationRequest request;
    std::string cancel_id;
  };
  struct Live {
    std::shared_ptr<GenerateStream> stream;
    int64_t prompt_tokens = 0;
    int64_t generated = 0;
  };
  void Loop();
  void Apply(Command command, bool ready);
  void RunStep();
  void FailAllUnavailable();
  void Publish();

  std::unique_ptr<engine::Engine> engine_;  // loop thread only
  const int rank_;
  StepLoopHooks hooks_;
  AttentionMetrics* metrics_;
  absl::flat_hash_map<std::string, Live> live_;  // loop thread only
  std::thread thread_;

  mutable absl::Mutex mu_;
  std::deque<Command> inbox_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  v1::WorkerLoad load_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe::services

#endif  // MOE_SERVICES_ATTENTION_WORKER_STEP_LOOP_H_
