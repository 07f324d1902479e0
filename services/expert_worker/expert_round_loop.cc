#include "services/expert_worker/expert_round_loop.h"

#include <iostream>
#include <vector>

#include "absl/time/clock.h"
#include "common/transport/moe_message.h"

namespace moe::services {

ExpertRoundLoop::ExpertRoundLoop(const engine::ExpertBlock* block, transport::ActivationTransport* transport,
                                 ExpertMetrics* metrics, int64_t num_layers, absl::Duration load_window)
    : block_(block),
      transport_(transport),
      metrics_(metrics),
      window_(num_layers, block->num_experts(), load_window) {}

void ExpertRoundLoop::Start() {
  absl::MutexLock lock(&mu_);
  if (running_) return;
  draining_ = false;
  running_ = true;
  thread_ = std::thread([this] { Loop(); });
}

uint64_t ExpertRoundLoop::Drain() {
  draining_ = true;
  // The loop checks draining_ between messages (and at least every 200 ms while idle), so the join
  // returns once the current round is answered.
  {
    absl::MutexLock lock(&mu_);
    if (thread_.joinable()) thread_.join();
    running_ = false;
  }
  return served_.load();
}

void ExpertRoundLoop::Stop() {
  Drain();
  transport_->Shutdown();
}

void ExpertRoundLoop::RefreshBalance(int64_t layer) {
  if (metrics_ == nullptr || layer < 0 || layer >= static_cast<int64_t>(metrics_->load_balance.size())) {
    return;
  }
  if (prometheus::Gauge* gauge = metrics_->load_balance[static_cast<size_t>(layer)]) {
    gauge->Set(window_.BalanceRatio(layer));
  }
}

void ExpertRoundLoop::ServeOne(const transport::Message& message) {
  transport::MessageTag reply_tag = message.tag;
  reply_tag.kind = transport::MessageKind::kCombine;
  reply_tag.sender = transport_->self();
  if (message.tag.kind != transport::MessageKind::kDispatch) {
    std::cerr << "expert worker: unexpected message " << message.tag.DebugString() << "\n";
    ++failed_;
    return;
  }
  const int64_t layer = message.tag.layer;
  const absl::Time start = absl::Now();
  auto served = block_->Serve(layer, message.payload);
  const absl::Duration compute = absl::Now() - start;
  std::vector<std::byte> reply;
  if (served.ok()) {
    reply = *std::move(served);
    ++served_;
    // Serve validated the message, so decoding it again cannot fail; it only gives the row counts.
    auto view = transport::DecodeMoeMessage(message.payload);
    if (view.ok() && metrics_ != nullptr) {
      uint64_t rows = 0;
      for (const transport::ExpertGroup& group : view->groups) {
        const int64_t local = group.expert - block_->first_expert();
        rows += static_cast<uint64_t>(group.num_rows);
        window_.Record(start, layer, local, static_cast<uint64_t>(group.num_rows));
        if (layer < static_cast<int64_t>(metrics_->expert_tokens.size()) &&
            local < static_cast<int64_t>(metrics_->expert_tokens[static_cast<size_t>(layer)].size())) {
          metrics_->expert_tokens[static_cast<size_t>(layer)][static_cast<size_t>(local)]->Increment(
              group.num_rows);
        }
      }
      if (layer < static_cast<int64_t>(metrics_->layer_tokens.size()) &&
          metrics_->layer_tokens[static_cast<size_t>(layer)] != nullptr) {
        metrics_->layer_tokens[static_cast<size_t>(layer)]->Increment(static_cast<double>(rows));
      }
      RefreshBalance(layer);
    }
  } else {
    // Answer with an empty message: the sender sees the group mismatch and fails its step at once
    // rather than at its deadline.
    std::cerr << "expert worker: " << served.status() << " for " << message.tag.DebugString() << "\n";
    transport::EncodeMoeMessageHeader(0, {}, &reply);
    ++failed_;
  }
  if (metrics_ != nullptr) {
    metrics_->rounds->Increment();
    metrics_->compute_seconds->Observe(absl::ToDoubleSeconds(compute));
    metrics_->bytes_received->Increment(static_cast<double>(message.payload.size()));
  }
  absl::Status sent = transport_->Send(message.tag.sender, reply_tag, reply);
  if (!sent.ok()) {
    std::cerr << "expert worker: reply to peer " << message.tag.sender << " failed: " << sent << "\n";
  } else if (metrics_ != nullptr) {
    metrics_->bytes_sent->Increment(static_cast<double>(reply.size()));
  }
}

void ExpertRoundLoop::Loop() {
  while (!draining_) {
    auto message = transport_->ReceiveAny(absl::Now() + absl::Milliseconds(200));
    if (absl::IsCancelled(message.status())) return;
    if (!message.ok()) {
      // Idle: let the balance gauges decay as rounds leave the window.
      if (window_.Advance(absl::Now())) {
        for (int64_t layer = 0; layer < window_.num_layers(); ++layer) RefreshBalance(layer);
      }
      continue;
    }
    ServeOne(*message);
  }
}

}  // namespace moe::services
