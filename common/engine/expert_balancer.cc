#include "common/engine/expert_balancer.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"

namespace moe::engine {
namespace {

// Worker loads with `extras` ([num_experts] ascending worker lists) on top of the home shards; each
// expert's rows split evenly over its available hosts (every worker when `available` is empty).
std::vector<double> Loads(const ExpertPlacement& base, const std::vector<std::vector<int64_t>>& extras,
                          const std::vector<uint64_t>& rows, const std::vector<bool>& available) {
  auto up = [&](int64_t w) { return available.empty() || available[static_cast<size_t>(w)]; };
  std::vector<double> loads(static_cast<size_t>(base.num_workers()), 0.0);
  for (int64_t e = 0; e < base.num_experts(); ++e) {
    const std::vector<int64_t>& extra = extras[static_cast<size_t>(e)];
    const int64_t shard = base.shard_of_expert(e);
    int64_t hosts = 0;
    for (int64_t r = 0; r < base.replicas(); ++r) hosts += up(base.replica(shard, r)) ? 1 : 0;
    for (int64_t w : extra) hosts += up(w) ? 1 : 0;
    if (hosts == 0) continue;  // refused before planning
    const double share = static_cast<double>(rows[static_cast<size_t>(e)]) / static_cast<double>(hosts);
    for (int64_t r = 0; r < base.replicas(); ++r) {
      if (up(base.replica(shard, r))) loads[static_cast<size_t>(base.replica(shard, r))] += share;
    }
    for (int64_t w : extra) {
      if (up(w)) loads[static_cast<size_t>(w)] += share;
    }
  }
  return loads;
}

// The loads of the available workers only (what the ratios are taken over).
std::vector<double> AvailableLoads(const std::vector<double>& loads, const std::vector<bool>& available) {
  if (available.empty()) return loads;
  std::vector<double> out;
  for (size_t w = 0; w < loads.size(); ++w) {
    if (available[w]) out.push_back(loads[w]);
  }
  return out;
}

// The objective: (max load, sum of squared loads), compared lexicographically.
std::pair<double, double> Objective(const std::vector<double>& loads) {
  double max = 0.0, squares = 0.0;
  for (double l : loads) {
    max = std::max(max, l);
    squares += l * l;
  }
  return {max, squares};
}

}  // namespace

double MaxMeanRatio(const std::vector<double>& loads) {
  double max = 0.0, sum = 0.0;
  for (double l : loads) {
    max = std::max(max, l);
    sum += l;
  }
  if (loads.empty() || sum <= 0.0) return 1.0;
  return max / (sum / static_cast<double>(loads.size()));
}

std::vector<double> ModelWorkerLoads(const ExpertPlacement& placement,
                                     const std::vector<uint64_t>& expert_rows) {
  return ModelWorkerLoads(placement, expert_rows, {});
}

std::vector<double> ModelWorkerLoads(const ExpertPlacement& placement,
                                     const std::vector<uint64_t>& expert_rows,
                                     const std::vector<bool>& available) {
  std::vector<std::vector<int64_t>> extras(static_cast<size_t>(placement.num_experts()));
  for (int64_t e = 0; e < placement.num_experts(); ++e)
    extras[static_cast<size_t>(e)] = placement.extra_workers(e);
  return Loads(placement, extras, expert_rows, available);
}

absl::StatusOr<BalancePlan> PlanExpertReplicas(const ExpertPlacement& base,
                                               const std::vector<uint64_t>& expert_rows,
                                               int64_t max_extras_per_worker) {
  if (max_extras_per_worker < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_extras_per_worker: must be >= 0, got ", max_extras_per_worker));
  }
  BalanceConstraints constraints;
  constraints.max_extras_per_worker = max_extras_per_worker;
  return PlanExpertReplicas(base, expert_rows, constraints);
}

absl::StatusOr<BalancePlan> PlanExpertReplicas(const ExpertPlacement& base,
                                               const std::vector<uint64_t>& expert_rows,
                                               const BalanceConstraints& constraints) {
  const int64_t num_experts = base.num_experts(), num_workers = base.num_workers();
  if (static_cast<int64_t>(expert_rows.size()) != num_experts) {
    return absl::InvalidArgumentError(
        absl::StrCat("expert_rows: ", expert_rows.size(), " counts for ", num_experts, " experts"));
  }
  const std::vector<bool>& available = constraints.available;
  if (!available.empty() && static_cast<int64_t>(available.size()) != num_workers) {
    return absl::InvalidArgumentError(
        absl::StrCat("available: ", available.size(), " entries for ", num_workers, " workers"));
  }
  if (!constraints.max_extras.empty() && static_cast<int64_t>(constraints.max_extras.size()) != num_workers) {
    return absl::InvalidArgumentError(absl::StrCat("max_extras: ", constraints.max_extras.size(),
                                                   " entries for ", num_workers, " workers"));
  }
  std::vector<int64_t> max_extras = constraints.max_extras;
  if (max_extras.empty())
    max_extras.assign(static_cast<size_t>(num_workers), constraints.max_extras_per_worker);
  for (int64_t w = 0; w < num_workers; ++w) {
    if (max_extras[static_cast<size_t>(w)] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("max_extras[", w, "]: must be >= 0, got ", max_extras[static_cast<size_t>(w)]));
    }
  }
  auto up = [&](int64_t w) { return available.empty() || available[static_cast<size_t>(w)]; };
  std::vector<std::vector<int64_t>> extras(static_cast<size_t>(num_experts));
  for (size_t i = 0; i < constraints.fixed.size(); ++i) {
    const auto [e, w] = constraints.fixed[i];
    if (e < 0 || e >= num_experts || w < 0 || w >= num_workers) {
      return absl::InvalidArgumentError(absl::StrCat("fixed[", i, "]: expert ", e, " on worker ", w,
                                                     " is out of range (", num_experts, " experts, ",
                                                     num_workers, " workers)"));
    }
    std::vector<int64_t>& extra = extras[static_cast<size_t>(e)];
    if (!up(w))
      return absl::InvalidArgumentError(absl::StrCat("fixed[", i, "]: worker ", w, " is not available"));
    if (base.home(w, e) || std::binary_search(extra.begin(), extra.end(), w)) {
      return absl::InvalidArgumentError(
          absl::StrCat("fixed[", i, "]: worker ", w, " already holds expert ", e));
    }
    extra.insert(std::upper_bound(extra.begin(), extra.end(), w), w);
  }
  for (int64_t e = 0; e < num_experts; ++e) {
    const int64_t shard = base.shard_of_expert(e);
    bool hosted = false;
    for (int64_t r = 0; r < base.replicas(); ++r) hosted = hosted || up(base.replica(shard, r));
    for (int64_t w : extras[static_cast<size_t>(e)]) hosted = hosted || up(w);
    if (!hosted) {
      return absl::FailedPreconditionError(
          absl::StrCat("expert ", e, ": no available worker hosts it (every worker of its shard ", shard,
                       " is unavailable)"));
    }
  }
  std::vector<int64_t> used(static_cast<size_t>(num_workers), 0);
  auto hosts = [&](int64_t e, int64_t w) {
    const std::vector<int64_t>& extra = extras[static_cast<size_t>(e)];
    return base.home(w, e) || std::binary_search(extra.begin(), extra.end(), w);
  };
  BalancePlan plan{base, {}, 1.0, 1.0};
  std::vector<double> loads = Loads(base, extras, expert_rows, available);
  plan.ratio_before = MaxMeanRatio(AvailableLoads(loads, available));
  while (true) {
    const auto current = Objective(loads);
    const int64_t top = std::max_element(loads.begin(), loads.end()) - loads.begin();
    auto best = current;
    int64_t best_expert = -1, best_worker = -1;
    for (int64_t e = 0; e < num_experts; ++e) {
      if (expert_rows[static_cast<size_t>(e)] == 0 || !hosts(e, top)) continue;
      for (int64_t w = 0; w < num_workers; ++w) {
        if (!up(w) || used[static_cast<size_t>(w)] >= max_extras[static_cast<size_t>(w)] || hosts(e, w))
          continue;
        std::vector<int64_t>& extra = extras[static_cast<size_t>(e)];
        extra.insert(std::upper_bound(extra.begin(), extra.end(), w), w);
        const auto candidate = Objective(Loads(base, extras, expert_rows, available));
        extra.erase(std::find(extra.begin(), extra.end(), w));
        if (candidate < best) {
          best = candidate;
          best_expert = e;
          best_worker = w;
        }
      }
    }
    if (best_expert < 0) break;
    std::vector<int64_t>& extra = extras[static_cast<size_t>(best_expert)];
    extra.insert(std::upper_bound(extra.begin(), extra.end(), best_worker), best_worker);
    ++used[static_cast<size_t>(best_worker)];
    plan.added.emplace_back(best_expert, best_worker);
    loads = Loads(base, extras, expert_rows, available);
  }
  plan.ratio_after = MaxMeanRatio(AvailableLoads(loads, available));
  ASSIGN_OR_RETURN(plan.placement, base.WithExtras(std::move(extras), base.version() + 1));
  return plan;
}

}  // namespace moe::engine
