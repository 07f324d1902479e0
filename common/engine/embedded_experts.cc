#include "common/engine/embedded_experts.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/engine/expert_compute_factory.h"
#include "common/model/weights.h"
#include "common/status/status_macros.h"

namespace moe::engine {

absl::StatusOr<std::unique_ptr<EmbeddedExperts>> EmbeddedExperts::Create(const model::Checkpoint& checkpoint,
                                                                         const model::ModelConfig& config,
                                                                         int num_shards, int replicas,
                                                                         const kernels::DeviceSpec& device) {
  if (!config.IsMoe()) return absl::InvalidArgumentError("the model has no experts to embed");
  if (num_shards < 1 || num_shards > config.num_experts) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_expert_shards must be in [1, ", config.num_experts, "], got ", num_shards));
  }
  if (replicas < 1)
    return absl::InvalidArgumentError(absl::StrCat("expert replicas must be >= 1, got ", replicas));
  RETURN_IF_ERROR(CheckComputeDevice(device));
  const int num_workers = num_shards * replicas;
  std::vector<int32_t> peers;
  for (int w = 0; w < num_workers; ++w) peers.push_back(kFirstExpertPeerId + w);
  std::unique_ptr<EmbeddedExperts> experts(new EmbeddedExperts(
      ExpertPlacement(config.num_experts, std::move(peers), replicas), &checkpoint, config));
  for (int w = 0; w < num_workers; ++w) {
    const ExpertRange range = experts->placement_.range(w);
    ASSIGN_OR_RETURN(auto shard, model::LoadExpertShard(checkpoint, config, range.first, range.count));
    if (device.is_cuda()) {
      ASSIGN_OR_RETURN(auto block, CreateExpertCompute(config, std::move(shard), device));
      experts->device_blocks_.push_back(std::move(block));
      experts->shards_.push_back(experts->device_blocks_.back().get());
    } else {
      experts->blocks_.push_back(LoadExpertBlock(config, std::move(shard)));
      experts->shards_.push_back(experts->blocks_.back().get());
    }
    experts->servers_.push_back(std::make_unique<ExpertShardServer>(
        experts->shards_.back(), experts->hub_.Endpoint(experts->placement_.peer(w))));
    experts->servers_.back()->Start();
  }
  return experts;
}

EmbeddedExperts::~EmbeddedExperts() {
  for (auto& server : servers_) server->Stop();
}

void EmbeddedExperts::SwitchToHugePagesInBackground() {
  for (auto& block : blocks_) block->SwitchToHugePagesInBackground();
}

void EmbeddedExperts::WaitForHugePages() {
  for (auto& block : blocks_) block->WaitForHugePages();
}

void EmbeddedExperts::DisconnectShardForTest(int worker) {
  hub_.Disconnect(kFirstExpertPeerId + worker);
}

int64_t EmbeddedExperts::ExpertBytes() const {
  int64_t bytes = 0;
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) bytes += shards_.front()->ExpertWeightBytes(l);
  return bytes;
}

absl::Status EmbeddedExperts::LoadExtraExperts(const ExpertPlacement& placement, int64_t budget_bytes) {
  if (!device_blocks_.empty()) {
    return absl::FailedPreconditionError(
        "extra experts (the expert load balancer) are served on the CPU only so far, and these shards "
        "are on a device");
  }
  if (placement.num_experts() != placement_.num_experts() ||
      placement.num_workers() != placement_.num_workers() || placement.replicas() != placement_.replicas()) {
    return absl::InvalidArgumentError("placement: not a placement of the embedded expert workers");
  }
  const int64_t expert_bytes = ExpertBytes();
  for (int64_t w = 0; w < placement.num_workers(); ++w) {
    const std::vector<int64_t> experts = placement.extra_experts(w);
    const int64_t bytes = static_cast<int64_t>(experts.size()) * expert_bytes;
    if (bytes > budget_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat("expert worker ", w, ": ", experts.size(),
                                                       " extra experts need ", bytes,
                                                       " bytes, over the budget of ", budget_bytes));
    }
  }
  std::vector<std::vector<std::unique_ptr<model::ExpertShardWeights>>> extras(
      static_cast<size_t>(placement.num_workers()));
  for (int64_t w = 0; w < placement.num_workers(); ++w) {
    for (int64_t e : placement.extra_experts(w)) {
      ASSIGN_OR_RETURN(auto extra, model::LoadExpertShard(*checkpoint_, config_, e, 1));
      model::PrefaultWeights(*extra);
      extras[static_cast<size_t>(w)].push_back(std::move(extra));
    }
  }
  for (int64_t w = 0; w < placement.num_workers(); ++w) {
    RETURN_IF_ERROR(
        blocks_[static_cast<size_t>(w)]->SetExtraExperts(std::move(extras[static_cast<size_t>(w)])));
  }
  return absl::OkStatus();
}

}  // namespace moe::engine
