// gRPC surface of the attention worker: moe.v1.AttentionWorker (attention.proto) with the callback
// API. Generate turns the request into an engine::GenerationRequest and hands it to the StepLoop
// with a GenerateStream (ServerWriteReactor); GetLoad answers from the loop's published load.
//
// Sequence identity: the engine and the step loop key a sequence by an id this service makes, a
// per-process counter followed by the caller's request_id ("17:router-…", kept for the logs). A
// caller's stream can cancel only its own sequence, however its request_id collides with another's.
//
// Thread safety: RPCs run on gRPC threads; StepLoop's Submit/Cancel/Load are thread-safe. Nothing
// blocks a gRPC thread: SetExpertPlacement's check of the expert workers (GetInfo calls) runs on the
// service's own control thread (a callback-API handler that blocks stalls the server's polling, and
// with it every other call and connection to this worker).
#ifndef MOE_SERVICES_ATTENTION_WORKER_ATTENTION_SERVICE_H_
#define MOE_SERVICES_ATTENTION_WORKER_ATTENTION_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/engine/engine.h"
#include "moe/v1/attention.grpc.pb.h"
#include "services/attention_worker/step_loop.h"

namespace moe::services {

// Converts a request (INVALID_ARGUMENT naming the field for what the engine cannot check: missing
// request_id or one over 256 bytes, top_logprobs outside [0, 20], negative stop token ids; the
// engine checks the rest, sampling values included). An absent `sampling` means greedy decoding.
// The engine request's id is the caller's request_id; Generate makes it unique (see below).
absl::StatusOr<engine::GenerationRequest> ToGenerationRequest(const v1::AttentionGenerateRequest& request);

class AttentionService final : public v1::AttentionWorker::CallbackService {
 public:
  // RPCs answer UNAVAILABLE ("loading") until SetLoop. `loop` is not owned and must outlive the
  // server.
  AttentionService();
  // Runs the control work still queued, then joins the control thread.
  ~AttentionService() override;
  AttentionService(const AttentionService&) = delete;
  AttentionService& operator=(const AttentionService&) = delete;
  void SetLoop(StepLoop* loop) { loop_ = loop; }

  grpc::ServerWriteReactor<v1::AttentionGenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const v1::AttentionGenerateRequest* request) override;
  grpc::ServerUnaryReactor* GetLoad(grpc::CallbackServerContext* context, const v1::GetLoadRequest* request,
                                    v1::WorkerLoad* response) override;
  // StepLoop::SwitchPlacement; only for callers with an operator's certificate. Checks the expert
  // workers (GetInfo) on the control thread, then answers once the loop has switched.
  grpc::ServerUnaryReactor* SetExpertPlacement(grpc::CallbackServerContext* context,
                                               const v1::SetExpertPlacementRequest* request,
                                               v1::SetExpertPlacementResponse* response) override;

 private:
  void RunControl();

  std::atomic<StepLoop*> loop_{nullptr};
  std::atomic<uint64_t> next_sequence_{0};
  absl::Mutex control_mu_;
  std::deque<std::function<void()>> control_queue_ ABSL_GUARDED_BY(control_mu_);
  bool control_stop_ ABSL_GUARDED_BY(control_mu_) = false;
  std::thread control_thread_;
};

}  // namespace moe::services

#endif  // MOE_SERVICES_ATTENTION_WORKER_ATTENTION_SERVICE_H_
