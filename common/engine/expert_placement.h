// Which expert workers host which experts (the shard map). The experts are split into S contiguous
// shards, as evenly as possible: with E experts and S shards the first E % S shards get one more
// (128 over 3 shards: [0,43), [43,86), [86,128)). With R replicas (--expert_replicas) there are
// N = S * R expert workers and worker w hosts shard w % S, so shard s lives on workers
// s, s + S, ..., s + (R - 1) * S: every expert of every layer is on R workers, and R - 1 of them may
// fail without losing it (docs/architecture.md#expert-replicas-and-failover). With R = 1 worker w
// hosts shard w, as before replicas existed.
#ifndef MOE_COMMON_ENGINE_EXPERT_PLACEMENT_H_
#define MOE_COMMON_ENGINE_EXPERT_PLACEMENT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
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
      : num_experts_(num_experts), replicas_(replicas), peers_(std::move(expert_peers)) {}

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
  int64_t num_workers() const { return static_cast<int64_t>(peers_.size()); }
  int64_t replicas() const { return replicas_; }
  int64_t num_shards() const { return num_workers() / replicas_; }
  int32_t peer(int64_t worker) const { return peers_[static_cast<size_t>(worker)]; }
  // The shard worker `worker` hosts, and the experts in it.
  int64_t shard_of_worker(int64_t worker) const { return worker % num_shards(); }
  ExpertRange range(int64_t worker) const {
    return RangeOf(num_experts_, num_shards(), shard_of_worker(worker));
  }
  int64_t shard_of_expert(int64_t expert) const { return ShardOf(num_experts_, num_shards(), expert); }
  // The `r`-th replica (worker index) of shard `shard`, r in [0, replicas()).
  int64_t replica(int64_t shard, int64_t r) const { return shard + r * num_shards(); }

 private:
  int64_t num_experts_;
  int64_t replicas_;
  std::vector<int32_t> peers_;
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_EXPERT_PLACEMENT_H_
