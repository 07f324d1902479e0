#include "common/engine/expert_round_handler.h"

#include <iostream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/transport/moe_message.h"

namespace moe::engine {

ExpertRoundHandler::Answer ExpertRoundHandler::Handle(const transport::Message& message, int32_t self,
                                                      std::vector<std::byte> buffer) const {
  Answer answer;
  answer.payload = std::move(buffer);
  if (message.tag.kind != transport::MessageKind::kDispatch) {
    std::cerr << "expert shard server: unexpected message " << message.tag.DebugString() << "\n";
    answer.served = absl::InvalidArgumentError(absl::StrCat("not a dispatch: ", message.tag.DebugString()));
    return answer;
  }
  answer.reply = true;
  answer.tag = message.tag;
  answer.tag.kind = transport::MessageKind::kCombine;
  answer.tag.sender = self;

  answer.start = absl::Now();
  const absl::Status served = block_->ServeInto(message.tag.layer, message.payload, &answer.payload);
  answer.compute = absl::Now() - answer.start;
  if (!served.ok()) {
    std::cerr << "expert shard server: " << served << " for " << message.tag.DebugString() << "\n";
    answer.served = served;
    transport::EncodeMoeMessageHeader(0, {}, &answer.payload);
  }
  // The answer carries how long this worker held the round, so the attention worker can tell
  // expert time from transport (moe_message.h, version 2). The payload was encoded just above. The
  // observer counts the activation bytes, without the stamp. The encoding reserved room for the
  // stamp, so stamping does not reallocate.
  answer.activation_bytes = answer.payload.size();
  transport::StampExpertTime(absl::Now() - answer.start, &answer.payload).IgnoreError();
  return answer;
}

void ExpertRoundHandler::Finish(const transport::Message& message, const Answer& answer,
                                const absl::Status& sent) {
  if (answer.reply && answer.served.ok()) {
    ++served_;
  } else {
    ++failed_;
  }
  if (observer_ == nullptr) return;
  absl::MutexLock lock(&observer_mu_);
  if (answer.reply && answer.served.ok()) {
    ReportServed(message, answer, sent.ok() ? answer.activation_bytes : 0);
  } else {
    observer_->OnRoundFailed({.layer = message.tag.layer,
                              .status = answer.served,
                              .compute = answer.compute,
                              .bytes_received = message.payload.size()});
  }
}

void ExpertRoundHandler::Idle(absl::Time now) {
  if (observer_ == nullptr) return;
  absl::MutexLock lock(&observer_mu_);
  observer_->OnIdle(now);
}

void ExpertRoundHandler::ReportServed(const transport::Message& message, const Answer& answer,
                                      uint64_t bytes_sent) {
  std::vector<uint64_t> rows(static_cast<size_t>(block_->num_experts()), 0);
  // Serve validated the message (every group's expert is hosted here), so decoding it again cannot
  // fail; it only gives the row counts.
  absl::StatusOr<transport::MoeMessageView> view = transport::DecodeMoeMessage(message.payload);
  if (view.ok()) {
    for (const transport::ExpertGroup& group : view->groups) {
      const int64_t local = group.expert - block_->first_expert();
      if (local >= 0 && local < block_->num_experts()) {
        rows[static_cast<size_t>(local)] += static_cast<uint64_t>(group.num_rows);
      }
    }
  }
  observer_->OnRoundServed({.layer = message.tag.layer,
                            .rows_per_expert = rows,
                            .start = answer.start,
                            .compute = answer.compute,
                            .bytes_received = message.payload.size(),
                            .bytes_sent = bytes_sent});
}

}  // namespace moe::engine
