// A fake attention worker for the router's tests: an in-process gRPC AttentionWorker (serve it on
// 127.0.0.1 port 0) whose Generate streams scripted tokens, chosen by the prompt's first token id.
#ifndef MOE_TESTS_SERVICES_ROUTER_FAKE_ATTENTION_WORKER_H_
#define MOE_TESTS_SERVICES_ROUTER_FAKE_ATTENTION_WORKER_H_

#include <atomic>
#include <functional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "moe/v1/attention.grpc.pb.h"

namespace moe::router::fakes {

inline constexpr int32_t kNormal = 1;  // prompt[0]: stream the script, then STOP
inline constexpr int32_t kStall = 2;   // one token, then wait for a cancel
inline constexpr int32_t kFail = 3;    // UNAVAILABLE
inline constexpr int32_t kOpen = 4;    // stream the script without finishing, then wait for a cancel

// Waits until `done()` holds or `timeout` passes; returns done(). For conditions set on gRPC
// threads that have no notification of their own.
inline bool WaitFor(const std::function<bool()>& done, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time until = absl::Now() + timeout;
  while (!done() && absl::Now() < until) absl::SleepFor(absl::Milliseconds(2));
  return done();
}

class FakeWorker final : public moe::v1::AttentionWorker::CallbackService {
 public:
  std::vector<int32_t> script;
  std::atomic<int> free_blocks{1000};
  std::atomic<int> cancels_seen{0};
  std::atomic<int> loads_served{0};  // GetLoad answers sent
  absl::Mutex ids_mu;
  std::vector<std::string> request_ids ABSL_GUARDED_BY(ids_mu);  // as the worker received them
  absl::Notification stalled;

  class Stream : public grpc::ServerWriteReactor<moe::v1::AttentionGenerateResponse> {
   public:
    Stream(FakeWorker* w, const moe::v1::AttentionGenerateRequest& r) : w_(w) {
      mode_ = r.prompt(0);
      if (mode_ < kNormal || mode_ > kOpen) mode_ = kNormal;  // e.g. a chat prompt: stream the script
      if (mode_ == kFail) {
        Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "expert worker lost"));
        return;
      }
      Next();
    }
    void Next() {
      msg_.Clear();
      const size_t n = mode_ == kStall ? 1 : w_->script.size();
      const bool open = mode_ == kStall || mode_ == kOpen;
      if (i_ < n) {
        msg_.add_tokens()->set_token_id(w_->script[i_++]);
        if (mode_ == kNormal && i_ == n) {
          msg_.set_finished(true);
          msg_.set_finish_reason(moe::v1::ATTENTION_FINISH_REASON_STOP);
        }
        StartWrite(&msg_);
      } else if (open) {
        if (mode_ == kStall) w_->stalled.Notify();  // now only a cancel ends it
      } else {
        Finish(grpc::Status::OK);
      }
    }
    void OnWriteDone(bool ok) override {
      if (ok) Next();
    }
    void OnCancel() override {
      w_->cancels_seen++;
      Finish(grpc::Status::CANCELLED);
    }
    void OnDone() override { delete this; }

   private:
    FakeWorker* w_;
    int32_t mode_;
    size_t i_ = 0;
    moe::v1::AttentionGenerateResponse msg_;
  };

  grpc::ServerWriteReactor<moe::v1::AttentionGenerateResponse>* Generate(
      grpc::CallbackServerContext*, const moe::v1::AttentionGenerateRequest* r) override {
    {
      absl::MutexLock lock(&ids_mu);
      request_ids.push_back(r->request_id());
    }
    return new Stream(this, *r);
  }
  grpc::ServerUnaryReactor* GetLoad(grpc::CallbackServerContext* c, const moe::v1::GetLoadRequest*,
                                    moe::v1::WorkerLoad* load) override {
    load->set_num_kv_blocks(1000);
    load->set_num_free_kv_blocks(free_blocks.load());
    load->set_kv_block_size(16);
    load->set_ready(true);
    loads_served++;
    auto* reactor = c->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

}  // namespace moe::router::fakes

#endif  // MOE_TESTS_SERVICES_ROUTER_FAKE_ATTENTION_WORKER_H_
