#include "services/router/attention_client.h"

#include <utility>

namespace moe::router {

WorkerCall::WorkerCall(moe::v1::AttentionWorker::Stub* stub, moe::v1::AttentionGenerateRequest request,
                       absl::Time deadline, Listener* listener)
    : stub_(stub), request_(std::move(request)), listener_(listener) {
  if (deadline != absl::InfiniteFuture()) context_.set_deadline(absl::ToChronoTime(deadline));
}

void WorkerCall::Start() {
  stub_->async()->Generate(&context_, &request_, this);
  AddHold();
  StartRead(&response_);
  StartCall();
  if (hold_state_.fetch_or(kStarted) & kStopRequested) ReleaseHoldOnce();
}

void WorkerCall::ReleaseHoldOnce() {
  if (!(hold_state_.fetch_or(kReleased) & kReleased)) RemoveHold();
}

void WorkerCall::ReadNext() {
  StartRead(&response_);
}

void WorkerCall::StopReading() {
  if (hold_state_.fetch_or(kStopRequested) & kStarted) ReleaseHoldOnce();
}

void WorkerCall::OnReadDone(bool ok) {
  if (ok) {
    listener_->OnWorkerMessage(response_);
  } else {
    StopReading();  // the stream ended; OnDone carries the status
  }
}

void WorkerCall::OnDone(const grpc::Status& status) {
  // Last statement: the listener may delete this call.
  listener_->OnWorkerDone(status);
}

AttentionClient::AttentionClient(std::string address, const rpc::ClientCredentials& credentials)
    : address_(std::move(address)) {
  grpc::ChannelArguments args;
  // Token streams are small, but a 20-logprob chunk of many tokens must never hit the 4 MiB default.
  args.SetMaxReceiveMessageSize(64 << 20);
  channel_ = credentials.CreateChannel(address_, args);
  stub_ = moe::v1::AttentionWorker::NewStub(channel_);
}

void AttentionClient::GetLoad(absl::Duration timeout,
                              std::function<void(const grpc::Status&, const moe::v1::WorkerLoad&)> done) {
  struct Call {
    grpc::ClientContext context;
    moe::v1::GetLoadRequest request;
    moe::v1::WorkerLoad response;
  };
  auto call = std::make_shared<Call>();
  call->context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  stub_->async()->GetLoad(
      &call->context, &call->request, &call->response,
      [call, done = std::move(done)](grpc::Status status) { done(status, call->response); });
}

}  // namespace moe::router
