#include "common/engine/moe_dispatch.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status/status_macros.h"
#include "common/transport/moe_message.h"

namespace moe::engine {

absl::StatusOr<DispatchHandle> MoeDispatcher::Dispatch(uint64_t step, uint32_t layer, uint32_t micro_batch,
                                                       const bf16* h, int64_t num_tokens, const int32_t* ids,
                                                       const float* weights, int64_t top_k) {
  const absl::Time start = absl::Now();
  const int64_t num_workers = placement_.num_workers();
  const int64_t num_experts = placement_.num_experts();
  DispatchHandle handle;
  handle.tag =
      transport::MessageTag{transport::MessageKind::kDispatch, step, layer, micro_batch, transport_->self()};
  handle.num_tokens = num_tokens;
  handle.top_k = top_k;
  handle.weights.assign(weights, weights + num_tokens * top_k);
  handle.slot_worker.resize(static_cast<size_t>(num_tokens * top_k));
  handle.slot_row.resize(static_cast<size_t>(num_tokens * top_k));
  handle.rows_per_worker.assign(static_cast<size_t>(num_workers), 0);
  handle.groups_per_worker.resize(static_cast<size_t>(num_workers));

  // Slots routed to each expert, in token order.
  std::vector<std::vector<int32_t>> slots_of_expert(static_cast<size_t>(num_experts));
  for (int64_t s = 0; s < num_tokens * top_k; ++s) {
    const int32_t expert = ids[s];
    if (expert < 0 || expert >= num_experts) {
      return absl::InternalError(absl::StrCat("gate chose expert ", expert, " of ", num_experts));
    }
    slots_of_expert[static_cast<size_t>(expert)].push_back(static_cast<int32_t>(s));
  }

  std::vector<std::byte> payload;
  for (int64_t w = 0; w < num_workers; ++w) {
    const ExpertRange range = placement_.range(w);
    auto& groups = handle.groups_per_worker[static_cast<size_t>(w)];
    for (int64_t e = range.first; e < range.first + range.count; ++e) {
      const auto& slots = slots_of_expert[static_cast<size_t>(e)];
      if (!slots.empty()) groups.push_back({static_cast<int32_t>(e), static_cast<int32_t>(slots.size())});
    }
    bf16* rows = transport::EncodeMoeMessageHeader(hidden_, groups, &payload);
    int32_t row = 0;
    for (const transport::ExpertGroup& g : groups) {
      for (int32_t s : slots_of_expert[static_cast<size_t>(g.expert)]) {
        std::memcpy(rows + static_cast<int64_t>(row) * hidden_, h + (s / top_k) * hidden_,
                    static_cast<size_t>(hidden_) * sizeof(bf16));
        handle.slot_worker[static_cast<size_t>(s)] = static_cast<int32_t>(w);
        handle.slot_row[static_cast<size_t>(s)] = row++;
      }
    }
    handle.rows_per_worker[static_cast<size_t>(w)] = row;
    RETURN_IF_ERROR(transport_->Send(placement_.peer(w), handle.tag, payload));
  }
  dispatch_time_ += absl::Now() - start;
  return handle;
}

absl::Status MoeDispatcher::Combine(const DispatchHandle& handle, bf16* out) {
  const int64_t num_workers = placement_.num_workers();
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + timeout_;
  std::vector<transport::Message> answers(static_cast<size_t>(num_workers));
  std::vector<const bf16*> rows(static_cast<size_t>(num_workers), nullptr);
  for (int64_t w = 0; w < num_workers; ++w) {
    transport::MessageTag tag = handle.tag;
    tag.kind = transport::MessageKind::kCombine;
    tag.sender = placement_.peer(w);
    auto answer = transport_->ReceiveTagged(tag, deadline);
    if (!answer.ok()) {
      return absl::UnavailableError(
          absl::StrCat("expert worker ", w, " (peer ", tag.sender, "): ", answer.status().message()));
    }
    answers[static_cast<size_t>(w)] = *std::move(answer);
    ASSIGN_OR_RETURN(transport::MoeMessageView view,
                     transport::DecodeMoeMessage(answers[static_cast<size_t>(w)].payload));
    const auto& sent = handle.groups_per_worker[static_cast<size_t>(w)];
    bool same = view.groups.size() == sent.size() && (sent.empty() || view.hidden == hidden_);
    for (size_t g = 0; same && g < sent.size(); ++g) {
      same = view.groups[g].expert == sent[g].expert && view.groups[g].num_rows == sent[g].num_rows;
    }
    if (!same) {
      return absl::InternalError(
          absl::StrCat("expert worker ", w, " answered a different round layout (it failed the round)"));
    }
    rows[static_cast<size_t>(w)] = view.rows;
  }

  const int64_t k = handle.top_k;
  std::vector<float> acc(static_cast<size_t>(hidden_));
  for (int64_t t = 0; t < handle.num_tokens; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t r = 0; r < k; ++r) {  // rank order: highest routing weight first
      const size_t s = static_cast<size_t>(t * k + r);
      const float weight = handle.weights[s];
      const bf16* y = rows[static_cast<size_t>(handle.slot_worker[s])] +
                      static_cast<int64_t>(handle.slot_row[s]) * hidden_;
      for (int64_t i = 0; i < hidden_; ++i) {
        const float product = weight * BF16ToFloat(y[i]);  // fp32 product, then fp32 sum
        acc[static_cast<size_t>(i)] += product;
      }
    }
    bf16* o = out + t * hidden_;
    for (int64_t i = 0; i < hidden_; ++i) o[i] = FloatToBF16(acc[static_cast<size_t>(i)]);
  }
  combine_time_ += absl::Now() - start;
  return absl::OkStatus();
}

}  // namespace moe::engine
