#include "services/attention_worker/attention_worker.h"

#include "absl/strings/str_cat.h"
#include "common/engine/expert_placement.h"
#include "common/model/config.h"
#include "common/model/model_fingerprint.h"
#include "common/status/status_macros.h"

namespace moe::services {

absl::StatusOr<std::unique_ptr<AttentionWorker>> AttentionWorker::Create(
    const AttentionWorkerOptions& options, prometheus::Registry* registry) {
  if (options.rank < 0 || options.rank >= engine::kFirstExpertPeerId) {
    return absl::InvalidArgumentError(
        absl::StrCat("--rank must be in [0, ", engine::kFirstExpertPeerId, "), got ", options.rank));
  }
  ASSIGN_OR_RETURN(model::ModelConfig config,
                   model::ModelConfig::FromFile(options.model_dir + "/config.json"));
  const int64_t num_workers = static_cast<int64_t>(options.expert_addresses.size());
  if (config.IsMoe() && num_workers < 1) {
    return absl::InvalidArgumentError("--expert_workers: a MoE model needs at least one expert worker");
  }
  if (config.IsMoe()) {
    if (absl::Status valid =
            engine::ExpertPlacement::Validate(config.num_experts, num_workers, options.expert_replicas);
        !valid.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--expert_workers: ", valid.message()));
    }
  }
  const int64_t num_joinable = static_cast<int64_t>(options.joinable_expert_addresses.size());
  if (num_joinable > 0 && !config.IsMoe()) {
    return absl::InvalidArgumentError("--joinable_expert_workers: a dense model has no expert workers");
  }
  if (num_workers + num_joinable > engine::kFirstExpertPeerId) {
    return absl::InvalidArgumentError(absl::StrCat("--joinable_expert_workers: ", num_workers + num_joinable,
                                                   " expert workers in all, at most ",
                                                   engine::kFirstExpertPeerId));
  }
  std::unique_ptr<AttentionWorker> worker(new AttentionWorker());
  worker->options_ = options;
  ASSIGN_OR_RETURN(worker->transport_, transport::UcxTransport::Create(options.rank, options.ucx));
  std::vector<int32_t> peers;
  for (int64_t w = 0; w < num_workers; ++w)
    peers.push_back(engine::kFirstExpertPeerId + static_cast<int32_t>(w));
  std::vector<int32_t> joinable_peers;
  for (int64_t w = num_workers; w < num_workers + num_joinable; ++w)
    joinable_peers.push_back(engine::kFirstExpertPeerId + static_cast<int32_t>(w));
  ASSIGN_OR_RETURN(engine::ExpertPlacement placement,
                   engine::ExpertPlacement(config.num_experts, std::move(peers), options.expert_replicas)
                       .WithJoinableWorkers(joinable_peers));
  worker->liveness_ = std::make_unique<engine::ExpertLiveness>(placement.num_workers());
  ASSIGN_OR_RETURN(worker->engine_, engine::Engine::CreateAttentionWorker(
                                        options.model_dir, options.engine, worker->transport_.get(),
                                        std::move(placement), worker->liveness_.get()));
  ExpertConnectorOptions& connector = worker->options_.connector;
  connector.expert_addresses = options.expert_addresses;
  connector.expert_addresses.insert(connector.expert_addresses.end(),
                                    options.joinable_expert_addresses.begin(),
                                    options.joinable_expert_addresses.end());
  connector.num_home_workers = static_cast<int>(num_workers);
  connector.attention_rank = options.rank;
  connector.num_experts = config.num_experts;
  connector.expert_replicas = options.expert_replicas;
  connector.liveness = worker->liveness_.get();
  connector.hidden_size = config.hidden_size;
  connector.experts_per_token = config.num_experts_per_tok;
  connector.max_round_tokens = options.engine.max_step_tokens;
  ASSIGN_OR_RETURN(connector.model_fingerprint, model::ModelFingerprint(options.model_dir));
  if (registry != nullptr) {
    worker->metrics_ = std::make_unique<AttentionMetrics>(*registry);
    worker->drop_metrics_ = std::make_unique<metrics::CounterMirror>(
        *registry, "moe_attention_data_plane_dropped_messages_total",
        "Data-plane messages dropped before being queued, by reason", "reason", transport::DropReasonNames(),
        [transport = worker->transport_.get()] {
          const transport::DropCounts counts = transport->drop_counts();
          return std::vector<uint64_t>(counts.begin(), counts.end());
        },
        absl::Seconds(1));
  }
  return worker;
}

void AttentionWorker::Start(std::function<void(bool)> on_ready_change) {
  on_ready_change_ = std::move(on_ready_change);
  // The loop needs the connector's readiness and the connector wakes the loop: build both, then
  // start the connector last.
  connector_ = std::make_unique<ExpertConnector>(options_.connector, transport_.get(), [this](bool ready) {
    if (loop_ != nullptr) loop_->Wake();
    if (on_ready_change_) on_ready_change_(ready);
  });
  ExpertConnector* connector = connector_.get();
  liveness_->SetFailureListener([connector](int64_t worker, const absl::Status& why) {
    connector->ReportPeerFailure(static_cast<int>(worker), why);
  });
  StepLoopHooks hooks;
  hooks.ready = [connector] { return connector->ready(); };
  hooks.on_data_plane_failure = [connector] { connector->ReportFailure(); };
  hooks.check_extras = [connector](const engine::ExpertPlacement& placement) {
    return connector->CheckHoldsExtras(placement);
  };
  loop_ = std::make_unique<StepLoop>(std::move(engine_), options_.rank, std::move(hooks), metrics_.get());
  loop_->Start();
  connector_->Start();
}

void AttentionWorker::Stop() {
  if (connector_ != nullptr) connector_->Stop();
  if (loop_ != nullptr) loop_->Stop();
}

}  // namespace moe::services
