#include "services/router/generate_call.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging/logging.h"
#include "common/rpc/status.h"

namespace moe::router {
namespace {

// A context deadline further away than this is "none" (gRPC reports no deadline as the far future).
constexpr absl::Duration kNoDeadline = absl::Hours(24 * 365);

moe::v1::FinishReason FromWorker(moe::v1::AttentionFinishReason r) {
  switch (r) {
    case moe::v1::ATTENTION_FINISH_REASON_STOP:
      return moe::v1::FINISH_REASON_STOP;
    case moe::v1::ATTENTION_FINISH_REASON_LENGTH:
      return moe::v1::FINISH_REASON_LENGTH;
    default:
      return moe::v1::FINISH_REASON_ERROR;
  }
}

// How often one request may move to another attention worker.
constexpr int kMaxMigrations = 3;

}  // namespace

GenerateCall::GenerateCall(GenerateService* service, grpc::CallbackServerContext* context,
                           const moe::v1::GenerateRequest& request)
    : service_(service), context_(context), arrival_(absl::Now()) {
  const absl::Time deadline = absl::FromChrono(context->deadline());
  if (deadline - arrival_ < kNoDeadline) deadline_ = deadline;

  RejectReason reject = RejectReason::kInvalidArgument;
  // Authorize counts its own rejection.
  const absl::Status authorized = service->Authorize(*context);
  absl::StatusOr<PreparedRequest> prepared =
      authorized.ok()
          ? PrepareRequest(request, service->model(), service->limits(), service->NextRequestId(), &reject)
          : absl::StatusOr<PreparedRequest>(authorized);
  Actions actions;
  {
    absl::MutexLock lock(&mu_);
    if (!prepared.ok()) {
      if (authorized.ok()) {
        service_->metrics().Rejected(
            reject == RejectReason::kPromptTooLong ? "prompt_too_long" : "invalid_argument",
            grpc::StatusCode::INVALID_ARGUMENT);
      }
      finish_called_ = true;
      actions.finish = rpc::ToGrpcStatus(prepared.status());
    } else {
      prepared_ = *std::move(prepared);
      prompt_tokens_ = static_cast<int32_t>(prepared_.prompt.size());
      output_ = std::make_unique<OutputProcessor>(*service_->model().tokenizer, prepared_.skip_special_tokens,
                                                  service_->model().think, prepared_.start_in_reasoning,
                                                  prepared_.stop, prepared_.parse_tool_calls);
      std::string reason;
      // No gRPC callback delivers until mu_ is released, so queued_ is set before OnCancel runs.
      absl::Status admitted = service_->worker_pool().Submit(
          std::shared_ptr<PendingRequest>(this, [](PendingRequest*) {}), &reason);
      if (!admitted.ok()) {
        const grpc::Status status = rpc::ToGrpcStatus(admitted);
        service_->metrics().Rejected(reason, status.error_code());
        finish_called_ = true;
        actions.finish = status;
      } else {
        queued_ = true;
        service_->metrics().PromptTokens(prompt_tokens_);
      }
    }
  }
  Run(actions);
}

int64_t GenerateCall::max_tokens() const {
  return static_cast<int64_t>(prepared_.prompt.size()) + prepared_.max_new_tokens;
}

void GenerateCall::Run(const Actions& actions) {
  if (actions.cancel_worker) actions.call->Cancel();
  if (actions.stop_reading) actions.call->StopReading();
  if (actions.start_worker) actions.call->Start();
  if (actions.write) StartWrite(&write_buffer_);
  if (actions.read_next) actions.call->ReadNext();
  if (actions.finish.has_value()) Finish(*actions.finish);  // last: OnDone may delete `this`
}

void GenerateCall::Decide(grpc::Status status, std::string reason) {
  if (decided_.has_value()) return;
  decided_ = std::move(status);
  decided_reason_ = std::move(reason);
}

void GenerateCall::DecideCancelled() {
  if (absl::Now() >= deadline_) {
    Decide(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline exceeded"), "deadline");
  } else {
    Decide(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client"), "cancelled");
  }
}

void GenerateCall::DecideWorkerFailure(grpc::StatusCode code, const std::string& detail) {
  const std::string where =
      absl::StrCat("attention worker ", service_->worker_pool().worker(worker_index_).address());
  LOG(WARNING) << "request " << prepared_.request_id << " (" << prepared_.cluster_id << "): " << where << ": "
               << detail;
  switch (code) {
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::FAILED_PRECONDITION:
      Decide(grpc::Status(code, detail), "error");
      return;
    case grpc::StatusCode::UNAVAILABLE:
      Decide(grpc::Status(code, absl::StrCat("request ", prepared_.request_id,
                                             " failed on an attention worker; it is safe to retry")),
             "error");
      return;
    default:
      Decide(grpc::Status(code, absl::StrCat("request ", prepared_.request_id,
                                             " failed on an attention worker (see the router's log)")),
             "error");
  }
}

bool GenerateCall::MaybeMigrate(const grpc::Status& status) {
  if (status.error_code() != grpc::StatusCode::UNAVAILABLE &&
      status.error_code() != grpc::StatusCode::CANCELLED) {
    return false;
  }
  const int64_t generated = static_cast<int64_t>(generated_.size());
  if (migrations_ >= kMaxMigrations || absl::Now() >= deadline_ || output_->stopped() ||
      generated >= prepared_.max_new_tokens) {
    return false;
  }
  // With no other worker the request fails as before (and the worker is not marked down: its own
  // failure may be about this request only).
  if (!service_->worker_pool().AnotherWorkerReady(worker_index_)) return false;
  const std::string from = service_->worker_pool().worker(worker_index_).address();
  service_->worker_pool().ReportFailure(worker_index_);
  moe::v1::AttentionGenerateRequest& w = prepared_.worker_request;
  w.mutable_prompt()->Truncate(static_cast<int>(prepared_.prompt.size()));
  w.mutable_prompt()->Add(generated_.begin(), generated_.end());
  w.set_generated_offset(static_cast<int32_t>(generated));
  retired_calls_.push_back(std::move(worker_call_));
  placed_ = false;
  service_->metrics().running().Decrement();
  std::string reason;
  const absl::Status submitted =
      service_->worker_pool().Submit(std::shared_ptr<PendingRequest>(this, [](PendingRequest*) {}), &reason);
  if (!submitted.ok()) {
    LOG(WARNING) << "request " << prepared_.request_id << " (" << prepared_.cluster_id
                 << "): attention worker " << from << " failed (" << status.error_message()
                 << ") and no other can take it: " << submitted.message();
    return false;
  }
  queued_ = true;
  ++migrations_;
  service_->metrics().Migrated();
  LOG(WARNING) << "request " << prepared_.request_id << " (" << prepared_.cluster_id << "): attention worker "
               << from << " failed (" << status.error_message() << "); migrating it with " << generated
               << " generated tokens (migration " << migrations_ << " of at most " << kMaxMigrations << ")";
  return true;
}

void GenerateCall::MaybeFinish(Actions* actions) {
  actions->call = worker_call_.get();
  if (decided_.has_value() && worker_call_ != nullptr && !worker_done_) actions->stop_reading = true;
  if (finish_called_ || !decided_.has_value() || write_in_flight_ || !worker_done_) return;
  finish_called_ = true;
  const absl::Time now = absl::Now();
  RouterMetrics& m = service_->metrics();
  m.RequestFinished(decided_reason_, decided_->error_code());
  m.request_duration().Observe(absl::ToDoubleSeconds(now - arrival_));
  if (first_token_at_.has_value() && completion_tokens_ >= 2) {
    m.time_per_output_token().Observe(absl::ToDoubleSeconds(now - *first_token_at_) /
                                      (completion_tokens_ - 1));
  }
  if (placed_) m.running().Decrement();
  actions->finish = *decided_;
}

bool GenerateCall::OnPlaced(size_t worker) {
  Actions actions;
  bool started = false;
  {
    absl::MutexLock lock(&mu_);
    queued_ = false;
    if (cancelled_) {
      DecideCancelled();
      MaybeFinish(&actions);
    } else {
      placed_ = true;
      started = true;
      worker_index_ = worker;
      placed_at_ = absl::Now();
      service_->metrics().queue_time().Observe(absl::ToDoubleSeconds(placed_at_ - arrival_));
      service_->metrics().running().Increment();
      worker_done_ = false;
      worker_call_ = std::make_unique<WorkerCall>(service_->worker_pool().worker(worker).stub(),
                                                  prepared_.worker_request, deadline_, this);
      actions.call = worker_call_.get();
      actions.start_worker = true;
    }
  }
  Run(actions);
  return started;
}

void GenerateCall::OnExpired() {
  Actions actions;
  {
    absl::MutexLock lock(&mu_);
    queued_ = false;
    if (absl::Now() >= deadline_) {
      Decide(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          "deadline exceeded while waiting for an attention worker"),
             "deadline");
    } else {
      Decide(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the router is shutting down"), "error");
    }
    MaybeFinish(&actions);
  }
  Run(actions);
}

void GenerateCall::OnCancel() {
  Actions actions;
  bool unqueue = false;
  {
    absl::MutexLock lock(&mu_);
    if (finish_called_) return;
    cancelled_ = true;
    DecideCancelled();
    if (queued_) {
      unqueue = true;
    } else {
      if (placed_ && !worker_done_) actions.cancel_worker = true;
      MaybeFinish(&actions);
    }
  }
  if (unqueue && service_->worker_pool().Cancel(this)) {
    // Removed before placement: nobody else will touch this call.
    absl::MutexLock lock(&mu_);
    queued_ = false;
    MaybeFinish(&actions);
  }
  // Otherwise OnPlaced is under way and finishes the call (it sees cancelled_).
  Run(actions);
}

void GenerateCall::AddTokens(const moe::v1::AttentionGenerateResponse& message,
                             moe::v1::GenerateResponse* out) {
  const tokenizer::Tokenizer& tok = *service_->model().tokenizer;
  OutputDelta delta;
  const absl::Time now = absl::Now();
  int added = 0;
  for (const moe::v1::AttentionToken& t : message.tokens()) {
    if (output_->stopped()) break;
    output_->Add(t.token_id(), &delta);
    generated_.push_back(t.token_id());
    moe::v1::GeneratedToken* g = out->add_tokens();
    g->set_token_id(t.token_id());
    g->set_logprob(t.logprob());
    const int n = std::min(t.top_token_ids_size(), t.top_logprobs_size());
    for (int i = 0; i < n && i < prepared_.logprobs; ++i) {
      moe::v1::TokenLogprob* top = g->add_top_logprobs();
      top->set_token_id(t.top_token_ids(i));
      const int32_t id = t.top_token_ids(i);
      top->set_token(tok.Decode(std::span<const int32_t>(&id, 1), false));
      top->set_logprob(t.top_logprobs(i));
    }
    if (!first_token_at_.has_value()) {
      first_token_at_ = now;
      service_->metrics().time_to_first_token().Observe(absl::ToDoubleSeconds(now - arrival_));
    } else {
      service_->metrics().inter_token_latency().Observe(absl::ToDoubleSeconds(now - last_token_at_));
    }
    last_token_at_ = now;
    ++completion_tokens_;
    ++added;
  }
  if (added > 0) service_->metrics().TokensGenerated(added);
  if (message.finished() && !output_->stopped()) output_->Finish(&delta);
  out->set_text(std::move(delta.text));
  out->set_reasoning_text(std::move(delta.reasoning_text));
  for (GeneratedToolCall& call : delta.tool_calls) {
    moe::v1::ToolCall* c = out->add_tool_calls();
    c->set_id(std::move(call.id));
    c->set_name(std::move(call.name));
    c->set_arguments(std::move(call.arguments));
  }
  if (delta.matched_stop.has_value()) out->set_matched_stop(prepared_.stop[*delta.matched_stop]);
}

void GenerateCall::FillFinal(moe::v1::FinishReason reason, moe::v1::GenerateResponse* out) {
  out->set_finished(true);
  out->set_finish_reason(reason);
  out->mutable_usage()->set_prompt_tokens(prompt_tokens_);
  out->mutable_usage()->set_completion_tokens(completion_tokens_);
  const absl::Time now = absl::Now();
  moe::v1::Timings* t = out->mutable_timings();
  t->set_queue_seconds(absl::ToDoubleSeconds(placed_at_ - arrival_));
  t->set_time_to_first_token_seconds(
      first_token_at_.has_value() ? absl::ToDoubleSeconds(*first_token_at_ - arrival_) : 0.0);
  t->set_total_seconds(absl::ToDoubleSeconds(now - arrival_));
}

void GenerateCall::OnWorkerMessage(const moe::v1::AttentionGenerateResponse& message) {
  Actions actions;
  {
    absl::MutexLock lock(&mu_);
    if (decided_.has_value()) return;  // cancelled or stopped: the worker call is being cancelled
    moe::v1::GenerateResponse& out = write_buffer_;
    out.Clear();
    out.set_request_id(prepared_.request_id);
    AddTokens(message, &out);
    if (output_->stopped()) {
      FillFinal(moe::v1::FINISH_REASON_STOP_SEQUENCE, &out);
      Decide(grpc::Status::OK, "stop_sequence");
      actions.cancel_worker = !message.finished();
      final_written_ = true;
    } else if (message.finished()) {
      const moe::v1::FinishReason reason = FromWorker(message.finish_reason());
      if (reason == moe::v1::FINISH_REASON_ERROR) {
        // The worker gave up on the sequence (e.g. an expert worker was lost): a worker failure.
        DecideWorkerFailure(grpc::StatusCode::UNAVAILABLE,
                            "failed the request: " + (message.error().empty() ? "aborted" : message.error()));
        out.clear_tokens();  // the partial text of a failed request is not sent
        out.clear_text();
        out.clear_reasoning_text();
        out.clear_tool_calls();
      } else {
        FillFinal(reason, &out);
        Decide(grpc::Status::OK, reason == moe::v1::FINISH_REASON_STOP ? "stop" : "length");
        final_written_ = true;
      }
    }
    const bool has_content = out.tokens_size() > 0 || out.finished() || !out.text().empty() ||
                             !out.reasoning_text().empty() || out.tool_calls_size() > 0;
    if (has_content) {
      write_in_flight_ = true;
      actions.write = true;
    } else if (!decided_.has_value()) {
      actions.read_next = true;
    }
    MaybeFinish(&actions);
  }
  Run(actions);
}

void GenerateCall::OnWriteDone(bool ok) {
  Actions actions;
  {
    absl::MutexLock lock(&mu_);
    write_in_flight_ = false;
    if (!ok && !decided_.has_value()) {
      // The client is gone; OnCancel normally reports it too.
      cancelled_ = true;
      DecideCancelled();
      if (!worker_done_) actions.cancel_worker = true;
    }
    if (!decided_.has_value()) actions.read_next = true;
    MaybeFinish(&actions);
  }
  Run(actions);
}

void GenerateCall::OnWorkerDone(const grpc::Status& status) {
  Actions actions;
  {
    absl::MutexLock lock(&mu_);
    worker_done_ = true;
    if (!decided_.has_value() && !cancelled_ && MaybeMigrate(status)) {
      // Queued again: OnPlaced starts the next worker call.
    } else if (!decided_.has_value()) {
      if (cancelled_) {
        DecideCancelled();
      } else if (status.ok()) {
        DecideWorkerFailure(grpc::StatusCode::INTERNAL, "ended the stream without a final message");
      } else if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
        Decide(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline exceeded"), "deadline");
      } else if (status.error_code() == grpc::StatusCode::CANCELLED) {
        // Not our cancel: the worker (or its connection) dropped the call.
        DecideWorkerFailure(grpc::StatusCode::UNAVAILABLE, "cancelled the request");
      } else {
        DecideWorkerFailure(status.error_code(), status.error_message());
      }
    }
    MaybeFinish(&actions);
  }
  Run(actions);
}

void GenerateCall::OnDone() {
  delete this;
}

}  // namespace moe::router
