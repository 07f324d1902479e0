#include "services/expert_worker/expert_worker.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/engine/expert_compute_factory.h"
#include "common/engine/expert_placement.h"
#include "common/model/checkpoint.h"
#include "common/model/config.h"
#include "common/model/model_fingerprint.h"
#include "common/model/weights.h"
#include "common/status/status_macros.h"
#include "common/transport/moe_message.h"

namespace moe::services {

absl::StatusOr<std::unique_ptr<ExpertWorker>> ExpertWorker::Create(const ExpertWorkerOptions& options,
                                                                   prometheus::Registry* registry) {
  if (options.num_expert_workers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--num_expert_workers must be >= 1, got ", options.num_expert_workers));
  }
  if (!options.joinable && (options.rank < 0 || options.rank >= options.num_expert_workers)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--rank must be in [0, ", options.num_expert_workers, "), got ", options.rank));
  }
  // A joinable worker's rank is past the home workers' (its peer id must not be one of theirs); the
  // bound keeps peer ids in the expert range.
  constexpr int kMaxExpertRank = 1000;
  if (options.joinable && (options.rank < options.num_expert_workers || options.rank >= kMaxExpertRank)) {
    return absl::InvalidArgumentError(absl::StrCat("--rank: a --joinable worker's rank must be in [",
                                                   options.num_expert_workers, ", ", kMaxExpertRank,
                                                   ") (past the home workers'), got ", options.rank));
  }
  if (options.load_window <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--load_window_seconds must be > 0");
  }
  if (options.max_round_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_round_tokens must be >= 1, got ", options.max_round_tokens));
  }
  ASSIGN_OR_RETURN(model::ModelConfig config,
                   model::ModelConfig::FromFile(options.model_dir + "/config.json"));
  if (!config.IsMoe()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--model: ", options.model_dir, " is a dense model; it needs no expert workers"));
  }
  RETURN_IF_ERROR(engine::ExpertPlacement::Validate(config.num_experts, options.num_expert_workers,
                                                    options.expert_replicas));
  const bool nccl = options.data_plane == v1::DATA_PLANE_NCCL;
  if (options.data_plane != v1::DATA_PLANE_UCX && !nccl) {
    return absl::InvalidArgumentError("--transport: the data plane must be ucx or nccl");
  }
  if (nccl && options.nccl_api == nullptr) {
    return absl::FailedPreconditionError("--transport nccl: no NCCL API (the CUDA backend plugin's)");
  }
  // One communicator per attention worker over the home expert workers
  // (docs/data-plane.md#nccl-rendezvous): no place for copies of a shard or workers that join later.
  if (nccl && options.expert_replicas > 1) {
    return absl::InvalidArgumentError("--expert_replicas: the nccl data plane serves one copy of each shard");
  }
  if (nccl && options.joinable) {
    return absl::InvalidArgumentError("--joinable: the nccl data plane has no joinable expert workers");
  }
  if (options.extra_expert_budget_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--extra_expert_budget_bytes must be >= 0, got ", options.extra_expert_budget_bytes));
  }
  std::unique_ptr<ExpertWorker> worker(new ExpertWorker());
  worker->config_ = config;
  worker->extra_budget_bytes_ = options.extra_expert_budget_bytes;
  worker->hidden_ = config.hidden_size;
  worker->top_k_ = config.num_experts_per_tok;
  worker->max_round_tokens_ = options.max_round_tokens;
  const engine::ExpertRange range = engine::ExpertPlacement::WorkerRange(
      config.num_experts, options.num_expert_workers, options.expert_replicas, options.rank);
  {
    // The checkpoint is mmap'd; LoadExpertShard copies out (or views) only this shard's tensors.
    ASSIGN_OR_RETURN(auto checkpoint, model::Checkpoint::Open(options.model_dir));
    ASSIGN_OR_RETURN(auto shard, model::LoadExpertShard(*checkpoint, config, range.first, range.count));
    ASSIGN_OR_RETURN(worker->block_, engine::CreateExpertCompute(config, std::move(shard), options.device));
    worker->checkpoint_ = std::move(checkpoint);
  }
  ASSIGN_OR_RETURN(std::string fingerprint, model::ModelFingerprint(options.model_dir));
  const int32_t peer = kFirstExpertPeerId + options.rank;
  if (!nccl) {
    ASSIGN_OR_RETURN(worker->transport_, transport::UcxTransport::Create(peer, options.ucx));
  }

  v1::ExpertWorkerInfo& info = worker->info_;
  info.set_rank(options.rank);
  info.set_num_expert_workers(options.num_expert_workers);
  info.set_first_expert(static_cast<int32_t>(range.first));
  info.set_num_experts(static_cast<int32_t>(range.count));
  info.set_peer_id(peer);
  info.set_data_plane(options.data_plane);
  if (!nccl) info.set_address(worker->transport_->WorkerAddress());
  info.set_model_fingerprint(fingerprint);
  info.set_expert_replicas(options.expert_replicas);
  info.set_extra_expert_budget_bytes(options.extra_expert_budget_bytes);

  if (registry != nullptr) {
    std::vector<int64_t> moe_layers;
    for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
      if (config.IsMoeLayer(l)) moe_layers.push_back(l);
    }
    worker->metrics_ =
        std::make_unique<ExpertMetrics>(*registry, moe_layers, config.num_hidden_layers, range.first,
                                        range.count, options.per_expert_metrics, options.load_window);
  }
  if (nccl) {
    worker->round_handler_ =
        std::make_unique<engine::ExpertRoundHandler>(worker->block_.get(), worker->metrics_.get());
    NcclLinksOptions links;
    links.self_peer = peer;
    links.model_fingerprint = fingerprint;
    links.max_round_tokens = options.max_round_tokens;
    // A dispatch carries at most min(top_k, hosted) rows per token (docs/data-plane.md#admission-and-bounds).
    links.message_bound = [hidden = config.hidden_size, hosted = range.count,
                           top_k = config.num_experts_per_tok](int64_t tokens) {
      return transport::MaxMoeMessageSize(hidden, hosted, top_k, tokens);
    };
    links.join_timeout = options.nccl_join_timeout;
    links.send_timeout = options.nccl_send_timeout;
    engine::ExpertRoundHandler* handler = worker->round_handler_.get();
    worker->nccl_links_ = std::make_unique<NcclExpertLinks>(
        std::move(links), options.nccl_api, [handler, peer](const transport::Message& dispatch) {
          // The round's record (without its payload, which is sent) finishes it after the send;
          // `dispatch` is still alive then (NcclAnswer::done).
          auto answer = std::make_shared<engine::ExpertRoundHandler::Answer>(handler->Handle(dispatch, peer));
          NcclAnswer out;
          out.payload = std::move(answer->payload);
          out.done = [handler, answer, &dispatch](const absl::Status& sent) {
            handler->Finish(dispatch, *answer, sent);
          };
          return out;
        });
  }
  if (registry != nullptr) {
    worker->drop_metrics_ = std::make_unique<metrics::CounterMirror>(
        *registry, "moe_expert_data_plane_dropped_messages_total",
        "Data-plane messages dropped before being queued, by reason", "reason", transport::DropReasonNames(),
        [raw = worker.get()] {
          const transport::DropCounts counts = raw->data_plane_drops();
          return std::vector<uint64_t>(counts.begin(), counts.end());
        },
        absl::Seconds(1));
  }
  if (nccl) return worker;
  worker->server_ = std::make_unique<engine::ExpertShardServer>(
      worker->block_.get(), worker->transport_.get(), worker->metrics_.get());
  worker->server_->Start();
  return worker;
}

uint64_t ExpertWorker::Drain() {
  if (server_ != nullptr) return server_->Drain();
  if (nccl_links_ != nullptr) nccl_links_->Stop();
  return rounds_served();
}

void ExpertWorker::Stop() {
  if (server_ != nullptr) server_->Stop();
  if (nccl_links_ != nullptr) nccl_links_->Stop();
}

uint64_t ExpertWorker::rounds_served() const {
  if (server_ != nullptr) return server_->rounds_served();
  return round_handler_ != nullptr ? round_handler_->rounds_served() : 0;
}

bool ExpertWorker::WaitQuiet(absl::Duration quiet, absl::Duration limit) const {
  const absl::Time deadline = absl::Now() + limit;
  uint64_t served = rounds_served();
  absl::Time last_change = absl::Now();
  while (absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
    const uint64_t now_served = rounds_served();
    if (now_served != served) {
      served = now_served;
      last_change = absl::Now();
    } else if (absl::Now() - last_change >= quiet) {
      return true;
    }
  }
  return false;
}

absl::StatusOr<std::string> ExpertWorker::ConnectAttention(int32_t peer_id, const std::string& address,
                                                           const std::string& fingerprint,
                                                           const std::string& secret,
                                                           int64_t max_round_tokens) {
  if (peer_id < 0 || peer_id >= kFirstExpertPeerId) {
    return absl::InvalidArgumentError(absl::StrCat("peer_id: attention worker peer ids are in [0, ",
                                                   kFirstExpertPeerId, "), got ", peer_id));
  }
  if (!fingerprint.empty() && fingerprint != info_.model_fingerprint()) {
    return absl::FailedPreconditionError(absl::StrCat("model_fingerprint: the attention worker serves model ",
                                                      fingerprint, ", this expert worker ",
                                                      info_.model_fingerprint()));
  }
  if (max_round_tokens < 1 || max_round_tokens > max_round_tokens_) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_round_tokens: must be in [1, ", max_round_tokens_, "], got ", max_round_tokens));
  }
  if (transport_ == nullptr) {
    return absl::FailedPreconditionError(
        "this expert worker's data plane is NCCL (--transport nccl): the attention worker must use "
        "ExpertControl/JoinNccl, not Connect");
  }
  if (secret.size() != transport::kDataPlaneSecretBytes) {
    return absl::InvalidArgumentError(absl::StrCat("data_plane_secret: ", secret.size(), " bytes, expected ",
                                                   transport::kDataPlaneSecretBytes));
  }
  RETURN_IF_ERROR(transport_->Connect(peer_id, address, secret));
  // The bound counts the extra experts the budget allows, so a round that uses them still fits.
  const int64_t max_extras = std::min<int64_t>(extra_budget_bytes_ / std::max<int64_t>(1, ExpertBytes()),
                                               config_.num_experts - info_.num_experts());
  return transport_->Admit(peer_id, transport::MaxMoeMessageSize(hidden_, info_.num_experts() + max_extras,
                                                                 top_k_, max_round_tokens));
}

int64_t ExpertWorker::ExpertBytes() const {
  int64_t bytes = 0;
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) bytes += block_->ExpertWeightBytes(l);
  return bytes;
}

v1::ExpertWorkerInfo ExpertWorker::info() const {
  v1::ExpertWorkerInfo info = info_;
  info.set_expert_bytes(ExpertBytes());
  absl::MutexLock lock(&extras_mu_);
  info.set_placement_version(placement_version_);
  for (int32_t e : extra_experts_) info.add_extra_experts(e);
  return info;
}

absl::Status ExpertWorker::LoadExtraExperts(uint64_t version, const std::vector<int32_t>& experts,
                                            std::optional<uint64_t> replaces) {
  absl::MutexLock lock(&extras_mu_);
  if (replaces.has_value() && *replaces != placement_version_) {
    return absl::AbortedError(absl::StrCat("replaces_version: ", *replaces,
                                           " is not this worker's placement version, ", placement_version_,
                                           " (another writer loaded extra experts since; read again)"));
  }
  if (version < placement_version_) {
    return absl::FailedPreconditionError(
        absl::StrCat("placement_version: ", version, " is older than this worker's ", placement_version_));
  }
  std::vector<int32_t> sorted;
  for (size_t i = 0; i < experts.size(); ++i) {
    const int32_t e = experts[i];
    if (e < 0 || e >= config_.num_experts) {
      return absl::InvalidArgumentError(
          absl::StrCat("experts[", i, "]: ", e, " is not in [0, ", config_.num_experts, ")"));
    }
    if (e >= info_.first_expert() && e < info_.first_expert() + info_.num_experts()) {
      return absl::InvalidArgumentError(
          absl::StrCat("experts[", i, "]: ", e, " is in this worker's home shard [", info_.first_expert(),
                       ", ", info_.first_expert() + info_.num_experts(), ")"));
    }
    if (std::find(sorted.begin(), sorted.end(), e) != sorted.end()) {
      return absl::InvalidArgumentError(absl::StrCat("experts[", i, "]: ", e, " is given twice"));
    }
    sorted.push_back(e);
  }
  const int64_t bytes = static_cast<int64_t>(sorted.size()) * ExpertBytes();
  if (bytes > extra_budget_bytes_) {
    return absl::ResourceExhaustedError(absl::StrCat("experts: ", sorted.size(), " extra experts need ",
                                                     bytes, " bytes; --extra_expert_budget_bytes is ",
                                                     extra_budget_bytes_));
  }
  std::sort(sorted.begin(), sorted.end());
  if (sorted == extra_experts_) {
    // The set held already (a balancer claiming this worker for its version): nothing to load.
    placement_version_ = version;
    return absl::OkStatus();
  }
  std::vector<std::unique_ptr<model::ExpertShardWeights>> weights;
  for (int32_t e : sorted) {
    ASSIGN_OR_RETURN(auto extra, model::LoadExpertShard(*checkpoint_, config_, e, 1));
    model::PrefaultWeights(*extra);
    weights.push_back(std::move(extra));
  }
  RETURN_IF_ERROR(block_->SetExtraExperts(std::move(weights)));
  placement_version_ = version;
  extra_experts_ = std::move(sorted);
  return absl::OkStatus();
}

}  // namespace moe::services
