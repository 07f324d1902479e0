#include "services/attention_worker/generate_stream.h"

#include "common/rpc/status.h"

namespace moe::services {

grpc::Status EngineErrorToGrpcStatus(const absl::Status& error) {
  if (absl::IsUnavailable(error)) return rpc::ToGrpcStatus(error);
  return rpc::ToGrpcStatus(absl::InternalError(error.ToString()));
}

class GenerateStream::ReactorImpl final : public GenerateStream::Reactor {
 public:
  explicit ReactorImpl(std::shared_ptr<GenerateStream> stream) : stream_(std::move(stream)) {}
  void OnWriteDone(bool ok) override { stream_->OnWriteDone(ok); }
  void OnCancel() override { stream_->OnCancel(); }
  void OnDone() override {
    stream_->OnDone();
    delete this;
  }

 private:
  std::shared_ptr<GenerateStream> stream_;
};

GenerateStream::GenerateStream(std::string request_id, std::function<void(const std::string&)> on_cancel)
    : request_id_(std::move(request_id)), on_cancel_(std::move(on_cancel)) {}

GenerateStream::Reactor* GenerateStream::MakeReactor(std::shared_ptr<GenerateStream> self) {
  auto* reactor = new ReactorImpl(std::move(self));
  absl::MutexLock lock(&mu_);
  reactor_ = reactor;
  return reactor;
}

bool GenerateStream::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

namespace {

v1::AttentionFinishReason ToProto(engine::FinishReason reason) {
  switch (reason) {
    case engine::FinishReason::kStop:
      return v1::ATTENTION_FINISH_REASON_STOP;
    case engine::FinishReason::kLength:
      return v1::ATTENTION_FINISH_REASON_LENGTH;
    case engine::FinishReason::kAbort:
      return v1::ATTENTION_FINISH_REASON_ABORT;
    case engine::FinishReason::kError:
      return v1::ATTENTION_FINISH_REASON_ERROR;
    case engine::FinishReason::kNone:
      break;
  }
  return v1::ATTENTION_FINISH_REASON_UNSPECIFIED;
}

}  // namespace

void GenerateStream::OnEvent(const engine::TokenEvent& event) {
  absl::MutexLock lock(&mu_);
  if (end_.has_value()) return;
  if (event.token_id >= 0) {
    v1::AttentionToken* token = pending_.add_tokens();
    token->set_token_id(event.token_id);
    token->set_logprob(event.logprob);
    for (const auto& top : event.top_logprobs) {
      token->add_top_token_ids(top.token_id);
      token->add_top_logprobs(top.logprob);
    }
  }
  switch (event.finish_reason) {
    case engine::FinishReason::kNone:
      break;
    case engine::FinishReason::kAbort:
      if (cancelled_) {
        end_ = grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
        break;
      }
      if (unavailable_.has_value()) {
        end_ = grpc::Status(grpc::StatusCode::UNAVAILABLE, *unavailable_);
        break;
      }
      [[fallthrough]];
    case engine::FinishReason::kStop:
    case engine::FinishReason::kLength:
      pending_.set_finished(true);
      pending_.set_finish_reason(ToProto(event.finish_reason));
      pending_.set_prompt_tokens(static_cast<int32_t>(event.prompt_tokens));
      pending_.set_completion_tokens(static_cast<int32_t>(event.completion_tokens));
      final_message_ = true;
      end_ = grpc::Status::OK;
      break;
    case engine::FinishReason::kError:
      end_ = EngineErrorToGrpcStatus(event.error);
      break;
  }
  MaybeWriteLocked();
}

void GenerateStream::FailUnavailable(std::string why) {
  absl::MutexLock lock(&mu_);
  unavailable_ = std::move(why);
}

void GenerateStream::End(grpc::Status status) {
  absl::MutexLock lock(&mu_);
  if (end_.has_value()) return;
  end_ = std::move(status);
  MaybeWriteLocked();
}

void GenerateStream::MaybeWriteLocked() {
  if (reactor_ == nullptr || write_in_flight_ || finish_called_) return;
  const bool has_tokens = pending_.tokens_size() > 0 || final_message_;
  if (has_tokens && !broken_ && !cancelled_) {
    writing_ = std::move(pending_);
    pending_.Clear();
    if (final_message_) {
      final_message_ = false;
      finish_called_ = true;
      reactor_->StartWriteAndFinish(&writing_, grpc::WriteOptions(), *end_);
    } else {
      write_in_flight_ = true;
      reactor_->StartWrite(&writing_);
    }
    return;
  }
  if (end_.has_value()) {
    finish_called_ = true;
    reactor_->Finish(*end_);
  }
}

void GenerateStream::OnWriteDone(bool ok) {
  absl::MutexLock lock(&mu_);
  write_in_flight_ = false;
  if (!ok) broken_ = true;
  MaybeWriteLocked();
}

void GenerateStream::OnCancel() {
  {
    absl::MutexLock lock(&mu_);
    if (finish_called_) return;
    cancelled_ = true;
    // Already ended by the engine (the final write lost to the cancel): finish now.
    if (end_.has_value()) {
      MaybeWriteLocked();
      return;
    }
  }
  on_cancel_(request_id_);
}

void GenerateStream::OnDone() {
  absl::MutexLock lock(&mu_);
  reactor_ = nullptr;
}

}  // namespace moe::services
