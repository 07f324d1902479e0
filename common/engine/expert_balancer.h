// The expert load balancer's planner (docs/architecture.md#expert-load-balancer): from the rows each
// expert received over a window, chooses extra copies of hot experts on other expert workers, within
// a per-worker budget of extra experts, so that the most loaded worker's share falls. A pure
// function: the engine (embedded mode) applies its plan; the same plan is what a cluster's workers
// would load before the attention workers switch.
//
// The load model: expert e's rows split evenly over its hosts (the dispatcher sends token t's rows
// to host (t + e) mod hosts, which spreads them evenly over a window), and a worker's load is the
// sum of its experts' shares. The plan is greedy, like DeepSeek's EPLB: while some copy lowers the
// objective, add the copy of an expert on the most loaded worker to another worker with budget left
// that gives the lowest objective. The objective is the most loaded worker's load, then the sum of
// squared loads (so ties at the top still make progress). Every choice is deterministic (ties go to
// the lower expert, then the lower worker), so the same counts give the same plan everywhere.
#ifndef MOE_COMMON_ENGINE_EXPERT_BALANCER_H_
#define MOE_COMMON_ENGINE_EXPERT_BALANCER_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/engine/expert_placement.h"

namespace moe::engine {

struct BalancePlan {
  ExpertPlacement placement;                       // the base's home shards plus the chosen extras
  std::vector<std::pair<int64_t, int64_t>> added;  // (expert, worker) copies, in the order chosen
  double ratio_before = 1.0;  // max / mean worker load under the base placement's home shards
  double ratio_after = 1.0;   // the same under the plan (the load model's prediction)
};

// max / mean of `loads` (1 when they are all zero or there are none).
double MaxMeanRatio(const std::vector<double>& loads);

// Worker loads under `placement` for `expert_rows` (the load model above, every worker available).
std::vector<double> ModelWorkerLoads(const ExpertPlacement& placement,
                                     const std::vector<uint64_t>& expert_rows);
// The same with only the `available` workers ([num_workers]) taking rows (BalanceConstraints).
std::vector<double> ModelWorkerLoads(const ExpertPlacement& placement,
                                     const std::vector<uint64_t>& expert_rows,
                                     const std::vector<bool>& available);

// What a cluster allows the planner: which workers may take rows and copies, how many copies each
// may hold, and copies every plan keeps. Empty vectors: every worker available, the same maximum
// everywhere.
struct BalanceConstraints {
  // [num_workers] or empty: whether the worker is available (answers, is not draining, is part of the
  // placement). An unavailable worker takes no rows in the load model (its experts' rows split over
  // their other hosts), is given no copy and is left out of the ratios.
  std::vector<bool> available;
  // [num_workers] or empty: the most extra experts each worker may be given (its budget divided by
  // one expert's bytes); empty: max_extras_per_worker for every worker.
  std::vector<int64_t> max_extras;
  int64_t max_extras_per_worker = 0;
  // (expert, worker) copies every plan keeps, free of budget: a joined worker's own shard, which it
  // holds from the start (docs/architecture.md#expert-workers-joining-and-leaving).
  std::vector<std::pair<int64_t, int64_t>> fixed;
};

// Plans extra copies from scratch on `base`'s home shards (its extras are ignored: a plan replaces
// the previous one), at most `max_extras_per_worker` per worker (the memory budget divided by one
// expert's bytes). The plan's placement has version base.version() + 1. INVALID_ARGUMENT naming the
// argument when expert_rows does not have one count per expert or max_extras_per_worker < 0.
absl::StatusOr<BalancePlan> PlanExpertReplicas(const ExpertPlacement& base,
                                               const std::vector<uint64_t>& expert_rows,
                                               int64_t max_extras_per_worker);

// The same within `constraints`: copies only on available workers, at most max_extras[w] on worker w
// besides the fixed ones, which every plan (and ratio_before) includes. INVALID_ARGUMENT naming the
// field for vectors of the wrong size, a negative maximum or a fixed copy on a worker out of range,
// unavailable or already holding the expert; FAILED_PRECONDITION naming the expert when an expert has
// no available host (every worker of its shard unavailable and no fixed copy).
absl::StatusOr<BalancePlan> PlanExpertReplicas(const ExpertPlacement& base,
                                               const std::vector<uint64_t>& expert_rows,
                                               const BalanceConstraints& constraints);

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_EXPERT_BALANCER_H_
