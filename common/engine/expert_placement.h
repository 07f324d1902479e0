// Which expert workers host which experts (the shard map). The experts are split into S contiguous
// shards, as evenly as possible: with E experts and S shards the first E % S shards get one more
// (128 over 3 shards: [0,43), [43,86), [86,128)). With R replicas (--expert_replicas) there are
// N = S * R expert workers and worker w hosts shard w % S, so shard s lives on workers
// s, s + S, ..., s + (R - 1) * S: every expert of every layer is on R workers, and R - 1 of them may
// fail without losing it (docs/architecture.md#expert-replicas-and-failover). With R = 1 worker w
// hosts shard w, as before replicas existed.
//
// On top of the home shards a placement may carry extra copies of single experts (the expert load
// balancer's, docs/architecture.md#expert-load-balancer): expert e may also live on some other
// workers, for every layer. The extras and a version number change together when the balancer
// applies a new plan; the home shards never change. The hosts of an expert, in dispatch order, are
// its shard's replicas in replica order, then its extra workers ascending (Hosts()).
//
// Joinable workers (issue 8 item 7, docs/architecture.md#expert-workers-joining-and-leaving): a
// placement may name workers beyond the N home ones, N..N+J-1, that host no home shard, only extra
// copies. They are fixed when the placement is made (so the dispatcher's, the liveness's and the
// load's worker sets keep their size) but need not exist yet: such a worker takes rows only once a
// placement version gives it extras and it is live. The home shards are computed from the N home
// workers alone, so adding or removing a joinable worker never moves a home expert.
#ifndef MOE_COMMON_ENGINE_EXPERT_PLACEMENT_H_
#define MOE_COMMON_ENGINE_EXPERT_PLACEMENT_H_

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace moe::engine {

// Data-plane peer ids, one rank space per cluster: attention worker a is peer a, expert worker e is
// peer kFirstExpertPeerId + e (so up to 1000 attention workers).
inline constexpr int32_t kFirstExpertPeerId = 1000;

struct ExpertRange {
  int64_t first = 0;  // first expert id
  int64_t count = 0;  // number of experts
};

class ExpertPlacement {
 public:
  // `expert_peers[w]` is the transport peer id of expert worker w; `replicas` must divide their
  // number (Validate).
  ExpertPlacement(int64_t num_experts, std::vector<int32_t> expert_peers, int64_t replicas = 1)
      : num_experts_(num_experts),
        replicas_(replicas),
        peers_(std::move(expert_peers)),
        home_workers_(static_cast<int64_t>(peers_.size())) {}

  // This placement with `peers` appended as joinable workers (no home shard; extra copies only).
  // INVALID_ARGUMENT naming `joinable_peers[i]` when a peer id is negative or already used.
  absl::StatusOr<ExpertPlacement> WithJoinableWorkers(const std::vector<int32_t>& peers) const {
    ExpertPlacement placement = *this;
    for (size_t i = 0; i < peers.size(); ++i) {
      if (peers[i] < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("joinable_peers[", i, "]: peer id ", peers[i], " is negative"));
      }
      if (std::find(placement.peers_.begin(), placement.peers_.end(), peers[i]) != placement.peers_.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("joinable_peers[", i, "]: peer id ", peers[i], " is already a worker's"));
      }
      placement.peers_.push_back(peers[i]);
    }
    // Extras sized for the old worker set stay valid: worker indices only grew.
    return placement;
  }

  // INVALID_ARGUMENT naming the flag unless `num_workers` workers in `replicas` replicas can host
  // `num_experts` experts: replicas >= 1, num_workers a multiple of replicas, at most one shard
  // per expert.
  static absl::Status Validate(int64_t num_experts, int64_t num_workers, int64_t replicas) {
    if (replicas < 1)
      return absl::InvalidArgumentError(absl::StrCat("--expert_replicas must be >= 1, got ", replicas));
    if (num_workers < replicas || num_workers % replicas != 0) {
      return absl::InvalidArgumentError(absl::StrCat("--expert_replicas: ", replicas,
                                                     " replicas need a multiple of ", replicas,
                                                     " expert workers, got ", num_workers));
    }
    if (num_workers / replicas > num_experts) {
      return absl::InvalidArgumentError(
          absl::StrCat("expert workers: ", num_workers / replicas, " shards for ", num_experts, " experts"));
    }
    return absl::OkStatus();
  }

  // The experts of shard `shard` of `num_shards`.
  static ExpertRange RangeOf(int64_t num_experts, int64_t num_shards, int64_t shard) {
    const int64_t base = num_experts / num_shards, extra = num_experts % num_shards;
    const int64_t first = shard * base + (shard < extra ? shard : extra);
    return {first, base + (shard < extra ? 1 : 0)};
  }
  // The shard of `num_shards` holding `expert`.
  static int64_t ShardOf(int64_t num_experts, int64_t num_shards, int64_t expert) {
    const int64_t base = num_experts / num_shards, extra = num_experts % num_shards;
    const int64_t boundary = extra * (base + 1);
    return expert < boundary ? expert / (base + 1) : extra + (expert - boundary) / base;
  }
  // The experts worker `worker` of `num_workers` hosts with `replicas` replicas.
  static ExpertRange WorkerRange(int64_t num_experts, int64_t num_workers, int64_t replicas, int64_t worker) {
    const int64_t shards = num_workers / replicas;
    return RangeOf(num_experts, shards, worker % shards);
  }

  int64_t num_experts() const { return num_experts_; }
  // Every worker, home and joinable: the size of the liveness and of per-worker arrays.
  int64_t num_workers() const { return static_cast<int64_t>(peers_.size()); }
  // The workers with a home shard, 0..num_home_workers()-1 (N = S x R).
  int64_t num_home_workers() const { return home_workers_; }
  bool joinable(int64_t worker) const { return worker >= home_workers_; }
  int64_t replicas() const { return replicas_; }
  int64_t num_shards() const { return home_workers_ / replicas_; }
  int32_t peer(int64_t worker) const { return peers_[static_cast<size_t>(worker)]; }
  // The shard worker `worker` hosts (-1 for a joinable worker), and the experts in it (none for a
  // joinable worker).
  int64_t shard_of_worker(int64_t worker) const { return joinable(worker) ? -1 : worker % num_shards(); }
  ExpertRange range(int64_t worker) const {
    if (joinable(worker)) return {0, 0};
    return RangeOf(num_experts_, num_shards(), shard_of_worker(worker));
  }
  int64_t shard_of_expert(int64_t expert) const { return ShardOf(num_experts_, num_shards(), expert); }
  // The `r`-th replica (worker index) of shard `shard`, r in [0, replicas()).
  int64_t replica(int64_t shard, int64_t r) const { return shard + r * num_shards(); }
  // Whether `worker` holds `expert` in its home shard.
  bool home(int64_t worker, int64_t expert) const {
    return shard_of_worker(worker) == shard_of_expert(expert);
  }

  // The balancer's extra copies: extra_workers(e) lists the workers that hold expert e besides its
  // shard's replicas, ascending. version() numbers the placement (0: home shards only, as made).
  uint64_t version() const { return version_; }
  bool has_extras() const { return num_extras_ > 0; }
  int64_t num_extras() const { return num_extras_; }
  const std::vector<int64_t>& extra_workers(int64_t expert) const {
    static const std::vector<int64_t> kNone;
    return extras_.empty() ? kNone : extras_[static_cast<size_t>(expert)];
  }
  // The experts `worker` holds besides its home shard, ascending.
  std::vector<int64_t> extra_experts(int64_t worker) const {
    std::vector<int64_t> experts;
    for (size_t e = 0; e < extras_.size(); ++e) {
      if (std::binary_search(extras_[e].begin(), extras_[e].end(), worker))
        experts.push_back(static_cast<int64_t>(e));
    }
    return experts;
  }
  // Every worker holding `expert`, in dispatch order: the shard's replicas, then the extras.
  std::vector<int64_t> Hosts(int64_t expert) const {
    std::vector<int64_t> hosts;
    const int64_t shard = shard_of_expert(expert);
    for (int64_t r = 0; r < replicas_; ++r) hosts.push_back(replica(shard, r));
    const std::vector<int64_t>& extra = extra_workers(expert);
    hosts.insert(hosts.end(), extra.begin(), extra.end());
    return hosts;
  }

  // This placement with `extras` ([num_experts] lists of worker indices) as its extra copies and
  // `version` as its version. INVALID_ARGUMENT naming the field when a list is not ascending, names
  // a worker out of range or one that already holds the expert in its home shard.
  absl::StatusOr<ExpertPlacement> WithExtras(std::vector<std::vector<int64_t>> extras,
                                             uint64_t version) const {
    if (!extras.empty() && static_cast<int64_t>(extras.size()) != num_experts_) {
      return absl::InvalidArgumentError(
          absl::StrCat("extras: ", extras.size(), " expert lists for ", num_experts_, " experts"));
    }
    int64_t count = 0;
    for (size_t e = 0; e < extras.size(); ++e) {
      const std::vector<int64_t>& workers = extras[e];
      for (size_t i = 0; i < workers.size(); ++i) {
        const int64_t w = workers[i];
        if (w < 0 || w >= num_workers()) {
          return absl::InvalidArgumentError(
              absl::StrCat("extras[", e, "]: worker ", w, " is not in [0, ", num_workers(), ")"));
        }
        if (i > 0 && workers[i - 1] >= w) {
          return absl::InvalidArgumentError(
              absl::StrCat("extras[", e, "]: workers must be ascending and distinct"));
        }
        if (home(w, static_cast<int64_t>(e))) {
          return absl::InvalidArgumentError(
              absl::StrCat("extras[", e, "]: worker ", w, " already holds expert ", e, " in its home shard"));
        }
      }
      count += static_cast<int64_t>(workers.size());
    }
    ExpertPlacement placement = *this;
    placement.extras_ = count > 0 ? std::move(extras) : std::vector<std::vector<int64_t>>();
    placement.num_extras_ = count;
    placement.version_ = version;
    return placement;
  }

 private:
  int64_t num_experts_;
  int64_t replicas_;
  std::vector<int32_t> peers_;
  int64_t home_workers_;  // workers [0, home_workers_) have a home shard; the rest are joinable
  uint64_t version_ = 0;
  std::vector<std::vector<int64_t>> extras_;  // [num_experts] or empty: none
  int64_t num_extras_ = 0;
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_EXPERT_PLACEMENT_H_
