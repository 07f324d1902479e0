#include "common/engine/expert_block.h"

#include <algorithm>
#include <atomic>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/kernels/cpu/kernels.h"
#include "common/status/status_macros.h"
#include "common/transport/moe_message.h"

namespace moe::engine {

ExpertBlock::ExpertBlock(const model::ModelConfig& config, std::unique_ptr<model::ExpertShardWeights> weights)
    : config_(config),
      first_expert_(weights->first_expert),
      num_experts_(weights->num_experts),
      num_layers_(weights->layers.size()),
      token_counts_(config_.num_hidden_layers, weights->num_experts),
      weights_(std::move(weights)) {}

std::unique_ptr<ExpertBlock> LoadExpertBlock(const model::ModelConfig& config,
                                             std::unique_ptr<model::ExpertShardWeights> weights,
                                             bool* in_background) {
  model::WarmUpOptions options = model::WeightsWarmUpOptions();
  const bool background = options.memory == model::WeightsMemory::kHugePages;
  if (background) options.memory = model::WeightsMemory::kMapped;
  model::PrefaultWeights(*weights, options);
  if (in_background != nullptr) *in_background = background;
  return std::make_unique<ExpertBlock>(config, std::move(weights));
}

void ExpertBlock::SwitchToHugePagesInBackground() {
  std::shared_ptr<const model::ExpertShardWeights> home;
  {
    absl::MutexLock lock(&weights_mu_);
    home = weights_;
  }
  if (huge_pages_ != nullptr || home->resident != nullptr) return;
  huge_pages_ = model::HugePageSwitch::Start(*home, [this, home](model::HugePageSwitch& copy) {
    std::shared_ptr<const model::ExpertShardWeights> relocated = copy.Relocated(home);
    {
      absl::MutexLock lock(&weights_mu_);
      weights_ = std::move(relocated);
    }
    copy.ReleaseSource();
  });
}

void ExpertBlock::WaitForHugePages() {
  if (huge_pages_ != nullptr) huge_pages_->Wait();
}

bool ExpertBlock::home_in_huge_pages() const {
  return TakeSnapshot().home->resident != nullptr;
}

ExpertBlock::Snapshot ExpertBlock::TakeSnapshot() const {
  absl::MutexLock lock(&weights_mu_);
  return Snapshot{weights_, extras_};
}

absl::Status ExpertBlock::Apply(int64_t layer, int64_t expert, const bf16* x, int64_t num_rows,
                                bf16* y) const {
  const Group group{expert, x, num_rows, y};
  return RunGroups(layer, std::span<const Group>(&group, 1));
}

absl::Status ExpertBlock::RunGroups(int64_t layer, std::span<const Group> groups) const {
  RETURN_IF_ERROR(CheckMoeLayer(config_, layer));
  const Snapshot snapshot = TakeSnapshot();
  const std::shared_ptr<const Extras>& extras = snapshot.extras;
  // Validate every group before computing anything, so a bad group leaves no partial work; resolve
  // each group's weights (home shard or an extra expert).
  int64_t total_rows = 0;
  std::vector<const model::MlpWeights*> mlp(groups.size(), nullptr);
  for (size_t i = 0; i < groups.size(); ++i) {
    const Group& g = groups[i];
    const int64_t local = g.expert - first_expert_;
    if (local >= 0 && local < num_experts_) {
      mlp[i] = &snapshot.home->layers[static_cast<size_t>(layer)][static_cast<size_t>(local)];
    } else if (extras != nullptr) {
      for (const auto& extra : *extras) {
        if (extra->first_expert == g.expert) mlp[i] = &extra->layers[static_cast<size_t>(layer)].front();
      }
    }
    if (mlp[i] == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "expert ", g.expert, " is not hosted here ([", first_expert_, ", ", first_expert_ + num_experts_,
          ")", extras != nullptr && !extras->empty() ? " and extras" : "", ")"));
    }
    if (g.num_rows < 0) {
      return absl::InvalidArgumentError(absl::StrCat("negative row count ", g.num_rows));
    }
    total_rows += g.num_rows;
  }
  if (total_rows == 0) return absl::OkStatus();
  const int64_t hidden = config_.hidden_size;
  // Every expert of a layer has the same intermediate size; take it per expert anyway so the
  // scratch layout never depends on that.
  std::vector<int64_t> inter_offset(groups.size() + 1, 0);
  for (size_t i = 0; i < groups.size(); ++i) {
    const model::MlpWeights& w = *mlp[i];
    inter_offset[i + 1] = inter_offset[i] + groups[i].num_rows * w.gate_proj.out_features;
  }
  std::unique_ptr<Scratch> scratch = TakeScratch();
  // Resizing keeps the capacity; the elements are all written by the products below before any is
  // read, whatever a former round left in them.
  std::vector<bf16>& gate = scratch->gate;
  std::vector<bf16>& up = scratch->up;
  gate.resize(static_cast<size_t>(inter_offset.back()));
  up.resize(static_cast<size_t>(inter_offset.back()));

  // Gate and up projections of all groups in one grouped product (gate then up per group, so
  // the FP8 path quantizes each group's rows once), then SiLU·mul, then all down projections.
  std::vector<kernels::cpu::LinearCall> calls;
  calls.reserve(2 * groups.size());
  for (size_t i = 0; i < groups.size(); ++i) {
    const Group& g = groups[i];
    if (g.num_rows == 0) continue;
    const model::MlpWeights& w = *mlp[i];
    const int64_t inter = w.gate_proj.out_features;
    calls.push_back({g.x, hidden, g.num_rows, &w.gate_proj, gate.data() + inter_offset[i], inter});
    calls.push_back({g.x, hidden, g.num_rows, &w.up_proj, up.data() + inter_offset[i], inter});
  }
  kernels::cpu::LinearGrouped(calls);
  for (size_t i = 0; i < groups.size(); ++i) {
    const int64_t n = inter_offset[i + 1] - inter_offset[i];
    if (n == 0) continue;
    kernels::cpu::SiluMul(gate.data() + inter_offset[i], up.data() + inter_offset[i], n,
                          gate.data() + inter_offset[i]);
  }
  calls.clear();
  for (size_t i = 0; i < groups.size(); ++i) {
    const Group& g = groups[i];
    if (g.num_rows == 0) continue;
    const model::MlpWeights& w = *mlp[i];
    calls.push_back(
        {gate.data() + inter_offset[i], w.down_proj.in_features, g.num_rows, &w.down_proj, g.y, hidden});
  }
  kernels::cpu::LinearGrouped(calls);
  for (const Group& g : groups) {
    const int64_t local = g.expert - first_expert_;
    if (g.num_rows == 0 || local < 0 || local >= num_experts_) continue;
    token_counts_.Add(layer, local, static_cast<uint64_t>(g.num_rows));
  }
  ReturnScratch(std::move(scratch));
  return absl::OkStatus();
}

std::unique_ptr<ExpertBlock::Scratch> ExpertBlock::TakeScratch() const {
  absl::MutexLock lock(&scratch_mu_);
  if (scratch_.empty()) return std::make_unique<Scratch>();
  std::unique_ptr<Scratch> scratch = std::move(scratch_.back());
  scratch_.pop_back();
  return scratch;
}

void ExpertBlock::ReturnScratch(std::unique_ptr<Scratch> scratch) const {
  absl::MutexLock lock(&scratch_mu_);
  scratch_.push_back(std::move(scratch));
}

absl::StatusOr<std::vector<std::byte>> ExpertBlock::Serve(int64_t layer,
                                                          std::span<const std::byte> dispatch) const {
  std::vector<std::byte> out;
  RETURN_IF_ERROR(ServeInto(layer, dispatch, &out));
  return out;
}

absl::Status ExpertBlock::ServeInto(int64_t layer, std::span<const std::byte> dispatch,
                                    std::vector<std::byte>* out) const {
  // RunGroups checks every group's expert against the home shard and the extra experts.
  ASSIGN_OR_RETURN(DecodedDispatch decoded,
                   DecodeDispatch(config_, first_expert_, num_experts_, layer, dispatch,
                                  /*check_experts=*/false, std::move(*out)));
  const transport::MoeMessageView& in = decoded.in;
  bf16* rows_out = decoded.rows_out;
  std::vector<Group> groups;
  groups.reserve(in.groups.size());
  int64_t offset = 0;
  for (const transport::ExpertGroup& g : in.groups) {
    groups.push_back(
        Group{g.expert, in.rows + offset * in.hidden, g.num_rows, rows_out + offset * in.hidden});
    offset += g.num_rows;
  }
  RETURN_IF_ERROR(RunGroups(layer, groups));
  *out = std::move(decoded.out);
  return absl::OkStatus();
}

int64_t ExpertBlock::ExpertWeightBytes(int64_t layer) const {
  return ShardExpertWeightBytes(*TakeSnapshot().home, layer);
}

std::vector<std::vector<uint64_t>> ExpertBlock::TokenCounts() const {
  return token_counts_.Snapshot();
}

}  // namespace moe::engine

namespace moe::engine {

absl::Status ExpertBlock::SetExtraExperts(std::vector<std::unique_ptr<model::ExpertShardWeights>> extras) {
  auto set = std::make_shared<Extras>();
  for (auto& extra : extras) {
    if (extra == nullptr || extra->num_experts != 1) {
      return absl::InvalidArgumentError("extra experts: each must hold exactly one expert");
    }
    const int64_t e = extra->first_expert;
    if (e >= first_expert_ && e < first_expert_ + num_experts_) {
      return absl::InvalidArgumentError(absl::StrCat("extra expert ", e, " is in this block's home shard"));
    }
    if (extra->layers.size() != num_layers_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "extra expert ", e, ": weights of ", extra->layers.size(), " layers, the model has ", num_layers_));
    }
    set->push_back(std::move(extra));
  }
  std::sort(set->begin(), set->end(),
            [](const auto& a, const auto& b) { return a->first_expert < b->first_expert; });
  for (size_t i = 1; i < set->size(); ++i) {
    if ((*set)[i - 1]->first_expert == (*set)[i]->first_expert) {
      return absl::InvalidArgumentError(
          absl::StrCat("extra expert ", (*set)[i]->first_expert, " given twice"));
    }
  }
  absl::MutexLock lock(&weights_mu_);
  extras_ = std::move(set);
  return absl::OkStatus();
}

std::vector<int64_t> ExpertBlock::ExtraExperts() const {
  const std::shared_ptr<const Extras> extras = TakeSnapshot().extras;
  std::vector<int64_t> ids;
  if (extras != nullptr) {
    for (const auto& extra : *extras) ids.push_back(extra->first_expert);
  }
  return ids;
}

}  // namespace moe::engine
