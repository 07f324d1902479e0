// The router's client of one attention worker (moe.v1.AttentionWorker): load polling and
// streaming Generate calls, both on gRPC's callback API.
#ifndef MOE_SERVICES_ROUTER_ATTENTION_CLIENT_H_
#define MOE_SERVICES_ROUTER_ATTENTION_CLIENT_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "common/rpc/tls.h"
#include "grpcpp/grpcpp.h"
#include "moe/v1/attention.grpc.pb.h"

namespace moe::router {

// One streaming Generate call to an attention worker.
//
// Protocol: Start() once; each message arrives at Listener::OnWorkerMessage; the listener calls
// ReadNext() when it wants the next one (this is the back-pressure towards the worker), or
// StopReading() when it wants no more. A hold keeps OnWorkerDone from running between a message and
// the listener's ReadNext (so ReadNext never touches a finished call); it is released by
// StopReading() or by the end of the stream. Exactly one OnWorkerDone follows, after which gRPC no
// longer touches the call; the owner may then delete it. Cancel() and StopReading() are thread-safe,
// idempotent and may be called any time after Start() (a cancelled worker frees the sequence).
class WorkerCall : public grpc::ClientReadReactor<moe::v1::AttentionGenerateResponse> {
 public:
  class Listener {
   public:
    virtual ~Listener() = default;
    virtual void OnWorkerMessage(const moe::v1::AttentionGenerateResponse& message) = 0;
    virtual void OnWorkerDone(const grpc::Status& status) = 0;
  };

  // `deadline` absl::InfiniteFuture() for none. `listener` must outlive OnWorkerDone.
  WorkerCall(moe::v1::AttentionWorker::Stub* stub, moe::v1::AttentionGenerateRequest request,
             absl::Time deadline, Listener* listener);

  void Start();
  void ReadNext();
  void StopReading();
  void Cancel() { context_.TryCancel(); }

  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

 private:
  moe::v1::AttentionWorker::Stub* stub_;
  grpc::ClientContext context_;
  moe::v1::AttentionGenerateRequest request_;
  moe::v1::AttentionGenerateResponse response_;
  Listener* listener_;
  // Start() and StopReading() may race (a cancel right after placement): bits of kStarted,
  // kStopRequested, kReleased decide who removes the hold, exactly once, after it was added.
  static constexpr int kStarted = 1, kStopRequested = 2, kReleased = 4;
  void ReleaseHoldOnce();
  std::atomic<int> hold_state_{0};
};

// Thread-safe.
class AttentionClient {
 public:
  // Channel to `address` ("host:port"). Does not connect until used.
  // Dials `address` with `credentials` (mTLS, or plaintext with --insecure).
  AttentionClient(std::string address, const rpc::ClientCredentials& credentials);

  const std::string& address() const { return address_; }
  moe::v1::AttentionWorker::Stub* stub() { return stub_.get(); }

  // Asynchronous GetLoad with a deadline; `done` runs on a gRPC thread.
  void GetLoad(absl::Duration timeout,
               std::function<void(const grpc::Status&, const moe::v1::WorkerLoad&)> done);

 private:
  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<moe::v1::AttentionWorker::Stub> stub_;
};

}  // namespace moe::router

#endif  // MOE_SERVICES_ROUTER_ATTENTION_CLIENT_H_
