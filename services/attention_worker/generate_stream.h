// One Generate call (attention.proto): the gRPC ServerWriteReactor and the state the step loop
// writes into. The loop hands TokenEvents to GenerateStream; tokens produced while a write is in
// flight are batched into the next message (flow control: at most one write in flight per call).
// Client cancellation or deadline (OnCancel) is forwarded to the loop, which cancels the sequence
// in the engine; the stream then ends with CANCELLED once the engine has freed it.
//
// Lifetime: gRPC owns the reactor until OnDone (after Finish and every write completed). The loop
// holds a shared_ptr<GenerateStream>, never the reactor: GenerateStream forgets the reactor in
// OnDone under its mutex, so a late event after the call ended is dropped safely.
//
// Thread safety: all methods are thread-safe.
#ifndef MOE_SERVICES_ATTENTION_WORKER_GENERATE_STREAM_H_
#define MOE_SERVICES_ATTENTION_WORKER_GENERATE_STREAM_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/engine/engine.h"
#include "grpcpp/grpcpp.h"
#include "moe/v1/attention.pb.h"

namespace moe::services {

// The one mapping of an engine error (TokenEvent::error of a kError event) to the call's status. A
// failed step is never the client's fault: UNAVAILABLE (a data-plane peer is gone; the router may
// retry on another worker) passes through with its message; any other code becomes INTERNAL, whose
// message keeps the engine's code and message.
grpc::Status EngineErrorToGrpcStatus(const absl::Status& error);

class GenerateStream {
 public:
  using Reactor = grpc::ServerWriteReactor<v1::AttentionGenerateResponse>;

  // `on_cancel(request_id)` is called (once, from a gRPC thread) when the client cancels.
  GenerateStream(std::string request_id, std::function<void(const std::string&)> on_cancel);

  // Creates the gRPC reactor bound to this stream (call once, in the handler).
  Reactor* MakeReactor(std::shared_ptr<GenerateStream> self);

  const std::string& request_id() const { return request_id_; }

  // Step loop: one engine event of this request. A finishing event ends the call: STOP/LENGTH with
  // a final message and OK; ABORT with CANCELLED if the client cancelled, with UNAVAILABLE if
  // FailUnavailable was called, else a final ABORT message; ERROR with EngineErrorToGrpcStatus of
  // the event's error.
  void OnEvent(const engine::TokenEvent& event);
  // Step loop: the request's sequence was cancelled because the expert workers are unreachable;
  // its abort event ends the call with UNAVAILABLE and `why`.
  void FailUnavailable(std::string why);
  // Ends the call with `status` (tokens not yet written are still sent first when status is OK).
  void End(grpc::Status status);

  bool cancelled() const;

 private:
  class ReactorImpl;
  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnWriteDone(bool ok);
  void OnCancel();
  void OnDone();

  const std::string request_id_;
  std::function<void(const std::string&)> on_cancel_;

  mutable absl::Mutex mu_;
  ReactorImpl* reactor_ ABSL_GUARDED_BY(mu_) = nullptr;
  v1::AttentionGenerateResponse pending_ ABSL_GUARDED_BY(mu_);  // tokens not yet written
  v1::AttentionGenerateResponse writing_ ABSL_GUARDED_BY(mu_);  // the write in flight
  std::optional<grpc::Status> end_ ABSL_GUARDED_BY(mu_);        // how the call ends
  bool final_message_ ABSL_GUARDED_BY(mu_) = false;             // pending_ carries finished=true
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_called_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;  // a write failed: the client is gone
  std::optional<std::string> unavailable_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe::services

#endif  // MOE_SERVICES_ATTENTION_WORKER_GENERATE_STREAM_H_
