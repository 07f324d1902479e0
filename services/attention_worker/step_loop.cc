#include "services/attention_worker/step_loop.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/engine/expert_balancer.h"
#include "common/rpc/status.h"

namespace moe::services {
namespace {

// A switch's compare-and-set lost: `replaces` is not the version in use.
absl::Status NotTheVersionInUse(uint64_t replaces, uint64_t in_use) {
  return absl::AbortedError(absl::StrCat("replaces_version: ", replaces,
                                         " is not the placement version in use, ", in_use,
                                         " (another writer switched since; read again)"));
}

}  // namespace

double ExpertLoadRatio(const engine::ExpertPlacement& placement, const std::vector<uint64_t>& rows,
                       const std::function<bool(int64_t)>& live) {
  std::vector<double> counted;
  for (size_t w = 0; w < rows.size(); ++w) {
    const int64_t worker = static_cast<int64_t>(w);
    const bool routed_to = worker < placement.num_workers() &&
                           (!placement.joinable(worker) || !placement.extra_experts(worker).empty());
    if (rows[w] > 0 || (routed_to && (!live || live(worker))))
      counted.push_back(static_cast<double>(rows[w]));
  }
  return engine::MaxMeanRatio(counted);
}

StepLoop::StepLoop(std::unique_ptr<engine::Engine> engine, int rank, StepLoopHooks hooks,
                   AttentionMetrics* metrics)
    : engine_(std::move(engine)), rank_(rank), hooks_(std::move(hooks)), metrics_(metrics) {
  if (engine_->expert_placement() != nullptr) home_placement_ = *engine_->expert_placement();
  Publish();
}

void StepLoop::SwitchPlacement(uint64_t version, const std::vector<std::pair<int64_t, int64_t>>& extras,
                               std::optional<uint64_t> replaces, std::function<void(absl::Status)> done) {
  if (!home_placement_.has_value()) {
    done(absl::FailedPreconditionError("a dense model has no expert placement"));
    return;
  }
  if (replaces.has_value()) {
    // Early, from the published version (what GetLoad answers), so a stale writer hears ABORTED rather
    // than that the copies it names are gone; the loop checks again when it applies the switch.
    uint64_t published = 0;
    {
      absl::MutexLock lock(&mu_);
      published = load_.expert_placement_version();
    }
    if (*replaces != published) {
      done(NotTheVersionInUse(*replaces, published));
      return;
    }
  }
  const engine::ExpertPlacement& home = *home_placement_;
  std::vector<std::vector<int64_t>> lists(static_cast<size_t>(home.num_experts()));
  for (size_t i = 0; i < extras.size(); ++i) {
    const auto [expert, worker] = extras[i];
    if (expert < 0 || expert >= home.num_experts()) {
      done(absl::InvalidArgumentError(
          absl::StrCat("extras[", i, "].expert: ", expert, " is not in [0, ", home.num_experts(), ")")));
      return;
    }
    lists[static_cast<size_t>(expert)].push_back(worker);
  }
  for (auto& list : lists) std::sort(list.begin(), list.end());
  absl::StatusOr<engine::ExpertPlacement> placement = home.WithExtras(std::move(lists), version);
  if (!placement.ok()) {
    done(placement.status());
    return;
  }
  absl::Status held = hooks_.check_extras
                          ? hooks_.check_extras(*placement)
                          : absl::FailedPreconditionError("no expert connector to check extras");
  if (!held.ok()) {
    done(held);
    return;
  }
  absl::MutexLock lock(&mu_);
  if (stop_) {
    done(absl::UnavailableError("the attention worker is shutting down"));
    return;
  }
  Command command;
  command.placement = *std::move(placement);
  command.replaces = replaces;
  command.done = std::move(done);
  inbox_.push_back(std::move(command));
}

void StepLoop::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void StepLoop::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void StepLoop::Submit(std::shared_ptr<GenerateStream> stream, engine::GenerationRequest request) {
  absl::MutexLock lock(&mu_);
  if (stop_) {
    stream->End(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the attention worker is shutting down"));
    return;
  }
  inbox_.push_back(Command{std::move(stream), std::move(request), ""});
}

void StepLoop::Cancel(const std::string& request_id) {
  absl::MutexLock lock(&mu_);
  inbox_.push_back(Command{nullptr, {}, request_id});
}

void StepLoop::Wake() {
  absl::MutexLock lock(&mu_);
  wake_ = true;
}

v1::WorkerLoad StepLoop::Load() const {
  v1::WorkerLoad load;
  {
    absl::MutexLock lock(&mu_);
    load = load_;
  }
  load.set_ready(hooks_.ready());
  return load;
}

void StepLoop::Publish() {
  v1::WorkerLoad load;
  load.set_rank(rank_);
  load.set_num_kv_blocks(engine_->num_blocks());
  load.set_num_free_kv_blocks(engine_->num_free_blocks());
  load.set_kv_block_size(static_cast<int32_t>(engine_->kv_block_size()));
  load.set_num_running(static_cast<int32_t>(engine_->num_running()));
  load.set_num_waiting(static_cast<int32_t>(engine_->num_waiting()));
  for (uint64_t rows : expert_rows_total_) load.add_expert_rows_total(rows);
  for (uint64_t rows : worker_rows_total_) load.add_expert_worker_rows_total(rows);
  if (engine_->expert_placement() != nullptr)
    load.set_expert_placement_version(engine_->expert_placement()->version());
  if (metrics_ != nullptr) {
    const double blocks = std::max<int32_t>(engine_->num_blocks(), 1);
    metrics_->kv_blocks->Set(engine_->num_blocks());
    metrics_->kv_free_blocks->Set(engine_->num_free_blocks());
    metrics_->kv_usage_ratio->Set((engine_->num_blocks() - engine_->num_free_blocks()) / blocks);
    metrics_->sequences_running->Set(static_cast<double>(live_.size()));
  }
  absl::MutexLock lock(&mu_);
  load_ = std::move(load);
}

void StepLoop::Apply(Command command, bool ready) {
  if (command.placement.has_value()) {
    // Between two steps: no round is in flight, so the next step's rounds all use the new version.
    const uint64_t current = engine_->expert_placement()->version();
    if (command.replaces.has_value() && *command.replaces != current) {
      command.done(NotTheVersionInUse(*command.replaces, current));
      return;
    }
    if (command.placement->version() <= current) {
      command.done(absl::FailedPreconditionError(absl::StrCat(
          "placement_version: ", command.placement->version(), " is not above the one in use, ", current)));
      return;
    }
    const int64_t copies = command.placement->num_extras();
    const uint64_t version = command.placement->version();
    const absl::Status switched = engine_->SwitchExpertPlacement(*std::move(command.placement));
    if (switched.ok()) {
      // Published before the caller hears OK: a GetLoad after the answer reads this version (a writer's
      // next compare-and-set names it).
      absl::MutexLock lock(&mu_);
      load_.set_expert_placement_version(version);
    }
    if (switched.ok() && metrics_ != nullptr) {
      metrics_->expert_placement_switches->Increment();
      metrics_->expert_extra_experts->Set(static_cast<double>(copies));
    }
    command.done(switched);
    return;
  }
  if (command.stream == nullptr) {
    engine_->Cancel(command.cancel_id);
    return;
  }
  if (!ready) {
    command.stream->End(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                     WithReason("UNAVAILABLE: not every expert worker is connected")));
    return;
  }
  const std::string id = command.request.id;
  const int64_t prompt_tokens = static_cast<int64_t>(command.request.prompt.size());
  absl::Status added = engine_->AddRequest(std::move(command.request));
  if (!added.ok()) {
    command.stream->End(rpc::ToGrpcStatus(added));
    return;
  }
  live_[id] = Live{std::move(command.stream), prompt_tokens, 0};
}

std::string StepLoop::WithReason(const std::string& text) const {
  const std::string reason = hooks_.not_ready_reason ? hooks_.not_ready_reason() : std::string();
  return reason.empty() ? text : absl::StrCat(text, " (", reason, ")");
}

void StepLoop::FailAllUnavailable() {
  const std::string why = WithReason("UNAVAILABLE: an expert worker is unreachable");
  for (auto& [id, live] : live_) {
    live.stream->FailUnavailable(why);
    engine_->Cancel(id);
  }
}

void StepLoop::RunStep() {
  const uint64_t steps_before = engine_->steps();
  std::vector<engine::TokenEvent> events = engine_->Step();

  bool data_plane_failed = false;
  for (const engine::TokenEvent& event : events) {
    auto it = live_.find(event.request_id);
    if (it == live_.end()) continue;
    if (event.token_id >= 0) ++it->second.generated;
    it->second.stream->OnEvent(event);
    if (event.finish_reason != engine::FinishReason::kNone) {
      if (event.finish_reason == engine::FinishReason::kError && absl::IsUnavailable(event.error)) {
        data_plane_failed = true;
      }
      live_.erase(it);
    }
  }
  if (data_plane_failed && hooks_.on_data_plane_failure) hooks_.on_data_plane_failure();
  if (metrics_ != nullptr && engine_->steps() != steps_before) {
    const engine::StepStats& stats = engine_->last_step_stats();
    metrics_->steps->Increment();
    metrics_->preemptions->Increment(static_cast<double>(stats.num_preemptions));
    metrics_->expert_failovers->Increment(static_cast<double>(stats.expert_resends));
    (stats.all_decode ? metrics_->step_decode_seconds : metrics_->step_prefill_seconds)
        ->Observe(absl::ToDoubleSeconds(stats.forward));
    metrics_->step_dispatch_seconds->Observe(absl::ToDoubleSeconds(stats.dispatch));
    metrics_->step_combine_seconds->Observe(absl::ToDoubleSeconds(stats.combine));
    metrics_->step_transport_seconds->Observe(absl::ToDoubleSeconds(stats.transport));
    metrics_->step_expert_wait_seconds->Observe(absl::ToDoubleSeconds(stats.expert_wait));
    metrics_->batch_sequences->Observe(static_cast<double>(stats.num_sequences));
    metrics_->batch_tokens->Observe(static_cast<double>(stats.num_tokens));
  }
  if (engine_->steps() != steps_before) PublishExpertLoad();
}

void StepLoop::PublishExpertLoad() {
  const engine::ExpertLoad load = engine_->TakeExpertLoad();
  if (load.worker_rows.empty()) return;
  expert_rows_total_.resize(load.expert_rows.size(), 0);
  for (size_t e = 0; e < load.expert_rows.size(); ++e) expert_rows_total_[e] += load.expert_rows[e];
  worker_rows_total_.resize(load.worker_rows.size(), 0);
  for (size_t w = 0; w < load.worker_rows.size(); ++w) worker_rows_total_[w] += load.worker_rows[w];
  if (metrics_ == nullptr) return;
  window_rows_.resize(load.worker_rows.size(), 0);
  for (size_t w = 0; w < load.worker_rows.size(); ++w) window_rows_[w] += load.worker_rows[w];
  if (absl::Now() - window_start_ < absl::Seconds(10)) return;
  if (std::any_of(window_rows_.begin(), window_rows_.end(), [](uint64_t rows) { return rows > 0; })) {
    metrics_->expert_load_ratio->Set(
        ExpertLoadRatio(*engine_->expert_placement(), window_rows_, hooks_.expert_live));
  }
  std::fill(window_rows_.begin(), window_rows_.end(), 0);
  window_start_ = absl::Now();
}

void StepLoop::Loop() {
  while (true) {
    std::deque<Command> commands;
    const bool busy = engine_->HasWork() && hooks_.ready();
    {
      absl::MutexLock lock(&mu_);
      if (!busy) {
        // The timeout bounds how late a readiness change (which does not always Wake) is noticed.
        mu_.AwaitWithTimeout(absl::Condition(
                                 +[](StepLoop* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) {
                                   return !self->inbox_.empty() || self->stop_ || self->wake_;
                                 },
                                 this),
                             absl::Milliseconds(100));
      }
      if (stop_) break;
      commands.swap(inbox_);
      wake_ = false;
    }
    const bool ready = hooks_.ready();
    for (Command& command : commands) Apply(std::move(command), ready);
    if (!ready && !live_.empty()) FailAllUnavailable();
    // Not ready: every held sequence was just cancelled, so the step only frees them.
    if (engine_->HasWork()) RunStep();
    Publish();
  }
  // Shutdown: nothing more will be stepped.
  for (auto& [id, live] : live_) {
    live.stream->End(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the attention worker is shutting down"));
  }
  live_.clear();
  absl::MutexLock lock(&mu_);
  for (Command& command : inbox_) {
    if (command.done) command.done(absl::UnavailableError("the attention worker is shutting down"));
    if (command.stream != nullptr) {
      command.stream->End(
          grpc::Status(grpc::StatusCode::UNAVAILABLE, "the attention worker is shutting down"));
    }
  }
  inbox_.clear();
}

}  // namespace moe::services
