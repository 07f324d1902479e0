#include "common/engine/moe_dispatch.h"

#include <algorithm>
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
  const int64_t num_experts = placement_.num_experts();
  if (micro_batch >= (1u << kResendShift)) {
    return absl::InternalError(absl::StrCat("micro_batch ", micro_batch, " does not fit its tag field"));
  }
  DispatchHandle handle;
  handle.tag =
      transport::MessageTag{transport::MessageKind::kDispatch, step, layer, micro_batch, transport_->self()};
  handle.num_tokens = num_tokens;
  handle.top_k = top_k;
  handle.h = h;
  handle.weights.assign(weights, weights + num_tokens * top_k);
  handle.ids.assign(ids, ids + num_tokens * top_k);
  handle.slot_part.assign(static_cast<size_t>(num_tokens * top_k), -1);
  handle.slot_row.assign(static_cast<size_t>(num_tokens * top_k), -1);
  std::vector<int32_t> slots(static_cast<size_t>(num_tokens * top_k));
  for (int64_t s = 0; s < num_tokens * top_k; ++s) {
    if (ids[s] < 0 || ids[s] >= num_experts) {
      return absl::InternalError(absl::StrCat("gate chose expert ", ids[s], " of ", num_experts));
    }
    slots[static_cast<size_t>(s)] = static_cast<int32_t>(s);
  }
  const std::vector<bool> none_excluded(static_cast<size_t>(placement_.num_workers()), false);
  RETURN_IF_ERROR(SendParts(&handle, slots, none_excluded, /*every_live_worker=*/true));
  dispatch_time_ += absl::Now() - start;
  return handle;
}

absl::Status MoeDispatcher::SendParts(DispatchHandle* handle, const std::vector<int32_t>& slots,
                                      const std::vector<bool>& excluded, bool every_live_worker) {
  const int64_t num_workers = placement_.num_workers();
  const int64_t top_k = handle->top_k;
  // The live hosts of each expert the slots route to, in dispatch order (ExpertPlacement::Hosts:
  // the shard's replicas, then the balancer's extra copies), computed once per expert.
  std::vector<std::vector<int64_t>> live_of_expert(static_cast<size_t>(placement_.num_experts()));
  std::vector<bool> known(static_cast<size_t>(placement_.num_experts()), false);
  // The worker of each slot: token t's rows of expert e go to live host (t + e) mod n, so an
  // expert's tokens spread over its hosts and the choice depends only on the round's routing and the
  // placement.
  std::vector<std::vector<int32_t>> slots_of_worker(static_cast<size_t>(num_workers));
  for (int32_t s : slots) {
    const int32_t expert = handle->ids[static_cast<size_t>(s)];
    std::vector<int64_t>& live = live_of_expert[static_cast<size_t>(expert)];
    if (!known[static_cast<size_t>(expert)]) {
      known[static_cast<size_t>(expert)] = true;
      const int64_t num_home_hosts = placement_.replicas();  // Hosts(): the replicas, then the extras
      const std::vector<int64_t> hosts = placement_.Hosts(expert);
      for (size_t i = 0; i < hosts.size(); ++i) {
        const int64_t w = hosts[i];
        const bool lost_copy =
            static_cast<int64_t>(i) >= num_home_hosts && extras_lost_[static_cast<size_t>(w)];
        if (!excluded[static_cast<size_t>(w)] && !lost_copy && Live(w)) live.push_back(w);
      }
    }
    if (live.empty()) {
      return absl::UnavailableError(absl::StrCat(
          "expert ", expert, " (shard ", placement_.shard_of_expert(expert), " of ", placement_.num_shards(),
          ", ", placement_.replicas(), " replicas, ", placement_.extra_workers(expert).size(),
          " extra copies): no live expert worker hosts it"));
    }
    const int64_t token = s / top_k;
    const int64_t w = live[static_cast<size_t>((token + expert) % static_cast<int64_t>(live.size()))];
    slots_of_worker[static_cast<size_t>(w)].push_back(s);
    ++load_.worker_rows[static_cast<size_t>(w)];
    ++load_.expert_rows[static_cast<size_t>(expert)];
  }

  for (int64_t w = 0; w < num_workers; ++w) {
    std::vector<int32_t>& mine = slots_of_worker[static_cast<size_t>(w)];
    const bool live = !excluded[static_cast<size_t>(w)] && Live(w);
    if (mine.empty() && !(every_live_worker && live)) continue;
    // Group the rows by expert, experts ascending, tokens in order within each.
    std::stable_sort(mine.begin(), mine.end(), [&](int32_t a, int32_t b) {
      return handle->ids[static_cast<size_t>(a)] < handle->ids[static_cast<size_t>(b)];
    });
    DispatchHandle::Part part;
    part.worker = w;
    part.resend = handle->parts.empty() || every_live_worker ? 0 : handle->resends;
    for (int32_t s : mine) {
      const int32_t expert = handle->ids[static_cast<size_t>(s)];
      if (part.groups.empty() || part.groups.back().expert != expert) part.groups.push_back({expert, 0});
      ++part.groups.back().num_rows;
    }
    bf16* rows = transport::EncodeMoeMessageHeader(hidden_, part.groups, &send_buffer_);
    const int32_t index = static_cast<int32_t>(handle->parts.size());
    for (size_t row = 0; row < mine.size(); ++row) {
      const int32_t s = mine[row];
      std::memcpy(rows + static_cast<int64_t>(row) * hidden_, handle->h + (s / top_k) * hidden_,
                  static_cast<size_t>(hidden_) * sizeof(bf16));
      handle->slot_part[static_cast<size_t>(s)] = index;
      handle->slot_row[static_cast<size_t>(s)] = static_cast<int32_t>(row);
    }
    part.slots = std::move(mine);
    transport::MessageTag tag = handle->tag;
    tag.micro_batch |= part.resend << kResendShift;
    // The transport may take the buffer (the loopback does) and leave another in its place.
    part.sent = transport_->SendBuffer(placement_.peer(w), tag, &send_buffer_);
    handle->parts.push_back(std::move(part));
  }
  return absl::OkStatus();
}

absl::Status MoeDispatcher::SetPlacement(ExpertPlacement placement) {
  if (placement.num_experts() != placement_.num_experts() ||
      placement.num_workers() != placement_.num_workers() || placement.replicas() != placement_.replicas() ||
      placement.num_home_workers() != placement_.num_home_workers()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "placement: ", placement.num_experts(), " experts on ", placement.num_workers(), " workers x ",
        placement.replicas(), " replicas does not match the dispatcher's ", placement_.num_experts(), " on ",
        placement_.num_workers(), " x ", placement_.replicas(), " (only the extra copies may change)"));
  }
  for (int64_t w = 0; w < placement.num_workers(); ++w) {
    if (placement.peer(w) != placement_.peer(w)) {
      return absl::InvalidArgumentError(absl::StrCat("placement: worker ", w, " is peer ", placement.peer(w),
                                                     ", not ", placement_.peer(w)));
    }
  }
  placement_ = std::move(placement);
  std::fill(extras_lost_.begin(), extras_lost_.end(), false);
  return absl::OkStatus();
}

ExpertLoad MoeDispatcher::TakeLoad() {
  ExpertLoad load = std::move(load_);
  load_ = ExpertLoad(placement_.num_experts(), placement_.num_workers());
  return load;
}

absl::Status MoeDispatcher::Combine(DispatchHandle& handle, bf16* out) {
  const absl::Time start = absl::Now();
  std::vector<transport::Message> answers;
  answers.reserve(handle.parts.size());
  std::vector<const bf16*> rows;
  std::vector<absl::Time> deadlines(handle.parts.size(), start + timeout_);
  std::vector<bool> failed(static_cast<size_t>(placement_.num_workers()), false);
  absl::Duration expert_time;  // the longest an expert worker reported holding this round
  // Sends part p's rows again (to live hosts not in `excluded`) as a new part with the next re-send
  // number; its answer is waited for in a later iteration of the loop below.
  auto resend = [&](size_t p, const std::vector<bool>& excluded) -> absl::Status {
    ++handle.resends;
    ++resends_;
    const std::vector<int32_t> slots = handle.parts[p].slots;  // SendParts may reallocate handle.parts
    RETURN_IF_ERROR(SendParts(&handle, slots, excluded, /*every_live_worker=*/false));
    deadlines.resize(handle.parts.size(), absl::Now() + timeout_);
    return absl::OkStatus();
  };
  // Parts may be appended (re-sends) while this loop runs, so index rather than iterate.
  for (size_t p = 0; p < handle.parts.size(); ++p) {
    const DispatchHandle::Part& part = handle.parts[p];
    transport::MessageTag tag = handle.tag;
    tag.kind = transport::MessageKind::kCombine;
    tag.sender = placement_.peer(part.worker);
    tag.micro_batch |= part.resend << kResendShift;
    absl::StatusOr<transport::Message> answer = part.sent.ok()
                                                    ? transport_->ReceiveTagged(tag, deadlines[p])
                                                    : absl::StatusOr<transport::Message>(part.sent);
    if (!answer.ok()) {
      const int64_t w = part.worker;
      const absl::Status why = absl::UnavailableError(
          absl::StrCat("expert worker ", w, " (peer ", tag.sender, "): ", answer.status().message()));
      failed[static_cast<size_t>(w)] = true;
      if (liveness_ != nullptr) liveness_->ReportFailed(w, why);
      if (placement_.replicas() == 1 && !placement_.has_extras()) return why;
      if (part.slots.empty()) {  // an empty part: nothing to re-send
        answers.emplace_back();
        rows.push_back(nullptr);
        continue;
      }
      // Failover: the part's rows go to other live replicas of the same shards.
      const absl::Status resent = resend(p, failed);
      if (!resent.ok()) return absl::UnavailableError(absl::StrCat(why.message(), "; ", resent.message()));
      answers.emplace_back();
      rows.push_back(nullptr);
      continue;
    }
    answers.push_back(*std::move(answer));
    ASSIGN_OR_RETURN(transport::MoeMessageView view, transport::DecodeMoeMessage(answers.back().payload));
    if (view.expert_time.has_value()) expert_time = std::max(expert_time, *view.expert_time);
    const auto& sent = part.groups;
    bool same = view.groups.size() == sent.size() && (sent.empty() || view.hidden == hidden_);
    for (size_t g = 0; same && g < sent.size(); ++g) {
      same = view.groups[g].expert == sent[g].expert && view.groups[g].num_rows == sent[g].num_rows;
    }
    if (!same) {
      const int64_t w = part.worker;
      const bool holds_extras = !placement_.extra_experts(w).empty();
      if (!holds_extras || extras_lost_[static_cast<size_t>(w)] || !view.groups.empty()) {
        return absl::InternalError(
            absl::StrCat("expert worker ", w, " answered a different round layout (it failed the round)"));
      }
      // Alive but without the extra copies the placement gives it (a restart loses them): its extra
      // copies get no rows from now on, and this part goes out again on that basis (its home rows
      // may go back to it).
      extras_lost_[static_cast<size_t>(w)] = true;
      const absl::Status resent = resend(p, std::vector<bool>(failed.size(), false));
      if (!resent.ok()) {
        return absl::UnavailableError(absl::StrCat(
            "expert worker ", w, " failed the round without its extra copies; ", resent.message()));
      }
      answers.back() = transport::Message();
      rows.push_back(nullptr);
      continue;
    }
    rows.push_back(view.rows);
  }
  const absl::Duration wait = absl::Now() - start;
  const absl::Duration expert_wait = std::min(expert_time, wait);
  wait_split_.expert_wait += expert_wait;
  wait_split_.transport += wait - expert_wait;

  const int64_t k = handle.top_k;
  const int64_t hidden = hidden_;
  std::vector<float> acc(static_cast<size_t>(hidden));
  for (int64_t t = 0; t < handle.num_tokens; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t r = 0; r < k; ++r) {  // rank order: highest routing weight first
      const size_t s = static_cast<size_t>(t * k + r);
      const float weight = handle.weights[s];
      const bf16* y =
          rows[static_cast<size_t>(handle.slot_part[s])] + static_cast<int64_t>(handle.slot_row[s]) * hidden;
      for (int64_t i = 0; i < hidden; ++i) {
        const float product = weight * BF16ToFloat(y[i]);  // fp32 product, then fp32 sum
        acc[static_cast<size_t>(i)] += product;
      }
    }
    bf16* o = out + t * hidden;
    for (int64_t i = 0; i < hidden; ++i) o[i] = FloatToBF16(acc[static_cast<size_t>(i)]);
  }
  // The answers' buffers go back to the transport for later sends (the loopback reuses them).
  for (transport::Message& answer : answers) transport_->Recycle(std::move(answer.payload));
  combine_time_ += absl::Now() - start;
  return absl::OkStatus();
}

}  // namespace moe::engine
