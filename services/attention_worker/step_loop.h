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
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/engine/engine.h"
#include "moe/v1/attention.pb.h"
#include "services/attention_worker/attention_metrics.h"
#include "services/attention_worker/generate_stream.h"

namespace moe::services {

struct StepLoopHooks {
  std::function<bool()> ready;                  // may be called often; must be cheap
  std::function<void()> on_data_plane_failure;  // called from the loop thread
  // Why the loop is not ready (e.g. the expert worker the NCCL watch lost), appended to the
  // UNAVAILABLE it answers then; may be unset or return "".
  std::function<std::string()> not_ready_reason;
  // Whether the expert workers hold a placement's extra experts (ExpertConnector::CheckHoldsExtras);
  // called from SwitchPlacement's caller. Unset: every placement is refused.
  std::function<absl::Status(const engine::ExpertPlacement&)> check_extras;
  // Whether expert worker `w` (by rank, home then joinable) is connected now; for
  // moe_attention_expert_load_ratio. Unset: every worker counts as live.
  std::function<bool(int64_t)> expert_live;
};

// moe_attention_expert_load_ratio: max / mean of `rows` (a window's rows per expert worker of
// `placement`, home then joinable) over the workers that count: those with rows in the window, and
// those the placement routes to (every home worker; a joinable worker only when the placement gives it
// copies) that are live (`live`; null: all are). A joinable slot nothing runs on, or that the placement
// does not use, is not a worker with zero load. 1 when no worker counts or none has rows.
double ExpertLoadRatio(const engine::ExpertPlacement& placement, const std::vector<uint64_t>& rows,
                       const std::function<bool(int64_t)>& live);

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

  // The expert load balancer: validates `extras` ((expert, worker) copies) into a placement of
  // version `version` (INVALID_ARGUMENT naming the field), checks hooks.check_extras, and has the loop
  // switch the engine to it between two steps; `done` hears the result (from the loop thread, or at
  // once on an error). FAILED_PRECONDITION when `version` is not above the one in use; ABORTED naming
  // replaces_version when `replaces` is given and is not the version in use (a compare-and-set: another
  // writer switched since the caller read it). Both are checked by the loop, so concurrent calls are
  // ordered.
  void SwitchPlacement(uint64_t version, const std::vector<std::pair<int64_t, int64_t>>& extras,
                       std::optional<uint64_t> replaces, std::function<void(absl::Status)> done);

 private:
  struct Command {
    std::shared_ptr<GenerateStream> stream;  // null for a cancel or a placement switch
    engine::GenerationRequest request;
    std::string cancel_id;
    std::optional<engine::ExpertPlacement> placement;  // a switch
    std::optional<uint64_t> replaces;                  // a switch's compare-and-set version
    std::function<void(absl::Status)> done;            // a switch's answer
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
  // `text`, with hooks_.not_ready_reason's answer appended if there is one.
  std::string WithReason(const std::string& text) const;
  void Publish();
  // Adds the step's rows per expert and per expert worker to the totals WorkerLoad reports and to the
  // window; sets moe_attention_expert_load_ratio and starts a new window every 10 s.
  void PublishExpertLoad();

  std::unique_ptr<engine::Engine> engine_;  // loop thread only
  // The engine's placement at construction: its home shards never change (SwitchPlacement).
  std::optional<engine::ExpertPlacement> home_placement_;
  const int rank_;
  StepLoopHooks hooks_;
  AttentionMetrics* metrics_;
  absl::flat_hash_map<std::string, Live> live_;  // loop thread only
  // moe_attention_expert_load_ratio's window (loop thread only).
  std::vector<uint64_t> window_rows_;
  // Rows dispatched per expert and per expert worker since start (WorkerLoad; loop thread only).
  std::vector<uint64_t> expert_rows_total_;
  std::vector<uint64_t> worker_rows_total_;
  absl::Time window_start_ = absl::Now();
  std::thread thread_;

  mutable absl::Mutex mu_;
  std::deque<Command> inbox_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  v1::WorkerLoad load_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe::services

#endif  // MOE_SERVICES_ATTENTION_WORKER_STEP_LOOP_H_
