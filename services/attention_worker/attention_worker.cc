#include "services/attention_worker/attention_worker.h"

#include "absl/strings/str_cat.h"
#include "common/engine/expert_placement.h"
#include "common/model/config.h"
#include "common/model/model_fingerprint.h"
#include "common/status/status_macros.h"
#include "common/transport/moe_message.h"

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
  const bool nccl = options.data_plane == v1::DATA_PLANE_NCCL;
  if (options.data_plane != v1::DATA_PLANE_UCX && !nccl) {
    return absl::InvalidArgumentError("--transport: the data plane must be ucx or nccl");
  }
  if (nccl) {
    if (options.nccl_api == nullptr) {
      return absl::FailedPreconditionError("--transport nccl: no NCCL API (the CUDA backend plugin's)");
    }
    // One communicator over the home expert workers, one round in flight
    // (docs/data-plane.md#nccl-rendezvous).
    if (options.expert_replicas > 1) {
      return absl::InvalidArgumentError(
          "--expert_replicas: the nccl data plane serves one copy of each shard");
    }
    if (num_joinable > 0) {
      return absl::InvalidArgumentError("--joinable_expert_workers: the nccl data plane has none");
    }
    if (options.engine.micro_batches != 1) {
      // NcclTransport::Send waits for the peer's receive: a second micro-batch's dispatch would wait
      // behind the first one's answer.
      return absl::InvalidArgumentError("--micro_batches: the nccl data plane runs one micro-batch");
    }
  }
  std::unique_ptr<AttentionWorker> worker(new AttentionWorker());
  worker->options_ = options;
  if (nccl) {
    transport::NcclTransportOptions nccl_options;
    // The largest message either way: a round of --max_step_tokens tokens to or from the largest shard.
    const int64_t largest_shard = num_workers > 0 ? (config.num_experts + num_workers - 1) / num_workers : 0;
    nccl_options.max_message_bytes = transport::MaxMoeMessageSize(
        config.hidden_size, largest_shard, config.num_experts_per_tok, options.engine.max_step_tokens);
    // A send to a dead expert worker must not outlast the round's own deadline.
    nccl_options.send_timeout = options.engine.moe_timeout;
    worker->nccl_transport_ =
        std::make_unique<transport::NcclTransport>(options.rank, options.nccl_api, nccl_options);
  } else {
    ASSIGN_OR_RETURN(worker->transport_, transport::UcxTransport::Create(options.rank, options.ucx));
  }
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
  // NCCL has no replicas to fail over to: the dispatcher sends to every worker, and a failed round
  // rebuilds the communicator (the step loop's failure report).
  ASSIGN_OR_RETURN(worker->engine_, engine::Engine::CreateAttentionWorker(
                                        options.model_dir, options.engine, worker->transport(),
                                        std::move(placement), nccl ? nullptr : worker->liveness_.get()));
  // A service: the weights' copy into huge pages (if any) starts now, to be done before traffic.
  worker->engine_->StartHugePageSwitch();
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
  NcclConnectorOptions& nccl_connector = worker->options_.nccl;
  nccl_connector.expert_addresses = options.expert_addresses;
  nccl_connector.attention_rank = options.rank;
  nccl_connector.model_fingerprint = connector.model_fingerprint;
  nccl_connector.max_round_tokens = options.engine.max_step_tokens;
  nccl_connector.credentials = connector.credentials;
  // Before each rendezvous, every expert worker's GetInfo must show the shard, model and data plane
  // this worker expects, as ExpertConnector checks them for UCX.
  nccl_connector.check_info = [num_workers = static_cast<int>(num_workers), num_experts = config.num_experts,
                               fingerprint = connector.model_fingerprint](int rank,
                                                                          const v1::ExpertWorkerInfo& info) {
    return ValidateExpertInfo(info, rank, num_workers, num_experts, fingerprint, 1, v1::DATA_PLANE_NCCL);
  };
  if (registry != nullptr) {
    worker->metrics_ = std::make_unique<AttentionMetrics>(*registry);
    worker->drop_metrics_ = std::make_unique<metrics::CounterMirror>(
        *registry, "moe_attention_data_plane_dropped_messages_total",
        "Data-plane messages dropped before being queued, by reason", "reason", transport::DropReasonNames(),
        [transport = worker->transport()] {
          const transport::DropCounts counts = transport->drop_counts();
          return std::vector<uint64_t>(counts.begin(), counts.end());
        },
        absl::Seconds(1));
  }
  return worker;
}

void AttentionWorker::Start(std::function<void(bool)> on_ready_change) {
  on_ready_change_ = std::move(on_ready_change);
  if (nccl_transport_ != nullptr) {
    nccl_connector_ = std::make_unique<NcclConnector>(options_.nccl, options_.nccl_api, nccl_transport_.get(),
                                                      [this](bool ready) {
                                                        if (loop_ != nullptr) loop_->Wake();
                                                        if (on_ready_change_) on_ready_change_(ready);
                                                      });
    NcclConnector* connector = nccl_connector_.get();
    StepLoopHooks hooks;
    hooks.ready = [connector] { return connector->ready(); };
    // A failed round aborted the communicator: rebuild it (next generation).
    hooks.on_data_plane_failure = [connector] { connector->ReportFailure(); };
    hooks.not_ready_reason = [connector] { return connector->last_error(); };
    hooks.check_extras = [](const engine::ExpertPlacement&) {
      return absl::FailedPreconditionError("extras: the nccl data plane has no extra expert copies");
    };
    loop_ = std::make_unique<StepLoop>(std::move(engine_), options_.rank, std::move(hooks), metrics_.get());
    loop_->Start();
    nccl_connector_->Start();
    return;
  }
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
  hooks.expert_live = [liveness = liveness_.get()](int64_t w) { return liveness->live(w); };
  loop_ = std::make_unique<StepLoop>(std::move(engine_), options_.rank, std::move(hooks), metrics_.get());
  loop_->Start();
  connector_->Start();
}

void AttentionWorker::Stop() {
  if (connector_ != nullptr) connector_->Stop();
  if (nccl_connector_ != nullptr) nccl_connector_->Stop();
  if (loop_ != nullptr) loop_->Stop();
}

}  // namespace moe::services
