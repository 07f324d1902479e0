// One Generate call: the server stream to the client, its place in the attention worker pool and
// its call to an attention worker. See generate_service.h for the flow.
//
// Threading: gRPC callbacks (OnCancel, OnWriteDone, worker messages) and the pool thread
// (OnPlaced, OnExpired) run concurrently; state is under mu_. gRPC operations are started only
// after mu_ is released, and Finish() is always the last thing a handler does, because OnDone
// (which deletes the call) may follow it at once.
#ifndef MOE_SERVICES_ROUTER_GENERATE_CALL_H_
#define MOE_SERVICES_ROUTER_GENERATE_CALL_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "moe/v1/generate.pb.h"
#include "services/router/admission.h"
#include "services/router/attention_client.h"
#include "services/router/generate_service.h"
#include "services/router/output_processor.h"
#include "services/router/request_validation.h"

namespace moe::router {

class GenerateCall final : public grpc::ServerWriteReactor<moe::v1::GenerateResponse>,
                           public PendingRequest,
                           public WorkerCall::Listener {
 public:
  // Starts the call (validation and admission happen here). Owned by gRPC: deletes itself in
  // OnDone.
  GenerateCall(GenerateService* service, grpc::CallbackServerContext* context,
               const moe::v1::GenerateRequest& request);

  // grpc::ServerWriteReactor
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

  // PendingRequest
  int64_t max_tokens() const override;
  absl::Time deadline() const override { return deadline_; }
  bool OnPlaced(size_t worker) override;
  void OnExpired() override;

  // WorkerCall::Listener
  void OnWorkerMessage(const moe::v1::AttentionGenerateResponse& message) override;
  void OnWorkerDone(const grpc::Status& status) override;

 private:
  // What a handler does after releasing mu_, in this order.
  struct Actions {
    // The worker call the flags below apply to, taken under mu_ (a migration replaces worker_call_).
    WorkerCall* call = nullptr;
    bool cancel_worker = false;
    bool stop_reading = false;
    bool start_worker = false;
    bool write = false;
    bool read_next = false;
    std::optional<grpc::Status> finish;
  };
  void Run(const Actions& actions);

  // Ends the call with `status` once nothing is in flight. `reason` is the metric label.
  void Decide(grpc::Status status, std::string reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends every locked section: once decided, reads stop and the call finishes when idle.
  void MaybeFinish(Actions* actions) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The reason and status for a call cancelled by the client or its deadline.
  void DecideCancelled() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A failure on the worker side. The client gets `code` and a message that names only its request
  // id (no worker addresses, peer ids or steps: those stay in the router's log, with the same id),
  // except for codes whose message is about the request itself (INVALID_ARGUMENT,
  // RESOURCE_EXHAUSTED, FAILED_PRECONDITION), which pass through as the worker wrote them.
  void DecideWorkerFailure(grpc::StatusCode code, const std::string& detail)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Request migration: when the attention worker's stream broke (UNAVAILABLE, or CANCELLED that
  // was not ours: the worker died, restarted or drained), resubmits the request to the pool as
  // prompt + the tokens generated so far with generated_offset set, so another worker continues
  // it exactly (the sampler's draws are keyed by the generated-token index). At most
  // kMaxMigrations times, and not past the deadline. True when resubmitted.
  bool MaybeMigrate(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddTokens(const moe::v1::AttentionGenerateResponse& message, moe::v1::GenerateResponse* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FillFinal(moe::v1::FinishReason reason, moe::v1::GenerateResponse* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  GenerateService* const service_;
  grpc::CallbackServerContext* const context_;
  const absl::Time arrival_;
  absl::Time deadline_ = absl::InfiniteFuture();
  PreparedRequest prepared_;

  absl::Mutex mu_;
  std::unique_ptr<OutputProcessor> output_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<WorkerCall> worker_call_ ABSL_GUARDED_BY(mu_);
  // Calls of workers the request migrated away from: kept until the call is deleted, since their
  // last callback may still be returning when the next call starts.
  std::vector<std::unique_ptr<WorkerCall>> retired_calls_ ABSL_GUARDED_BY(mu_);
  std::vector<int32_t> generated_ ABSL_GUARDED_BY(mu_);  // every token streamed so far
  int migrations_ ABSL_GUARDED_BY(mu_) = 0;
  size_t worker_index_ ABSL_GUARDED_BY(mu_) = 0;
  bool queued_ ABSL_GUARDED_BY(mu_) = false;
  bool placed_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool worker_done_ ABSL_GUARDED_BY(mu_) = true;  // true while no worker call exists
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool final_written_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_called_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> decided_ ABSL_GUARDED_BY(mu_);
  std::string decided_reason_ ABSL_GUARDED_BY(mu_);
  moe::v1::GenerateResponse write_buffer_ ABSL_GUARDED_BY(mu_);

  absl::Time placed_at_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Time> first_token_at_ ABSL_GUARDED_BY(mu_);
  absl::Time last_token_at_ ABSL_GUARDED_BY(mu_);
  int32_t prompt_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  int32_t completion_tokens_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace moe::router

#endif  // MOE_SERVICES_ROUTER_GENERATE_CALL_H_
