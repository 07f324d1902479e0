// Which expert worker hosts which experts (the shard map). Experts are split into contiguous
// ranges, as evenly as possible: with E experts and N workers the first E % N workers get one more
// (128 over 3 workers: [0,43), [43,86), [86,128)).
#ifndef MOE_COMMON_ENGINE_EXPERT_PLACEMENT_H_
#define MOE_COMMON_ENGINE_EXPERT_PLACEMENT_H_

#include <cstdint>
#include <vector>

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
  // `expert_peers[w]` is the transport peer id of expert worker w.
  ExpertPlacement(int64_t num_experts, std::vector<int32_t> expert_peers)
      : num_experts_(num_experts), peers_(std::move(expert_peers)) {}

  static ExpertRange RangeOf(int64_t num_experts, int64_t num_workers, int64_t worker) {
    const int64_t base = num_experts / num_workers, extra = num_experts % num_workers;
    const int64_t first = worker * base + (worker < extra ? worker : extra);
    return {first, base + (worker < extra ? 1 : 0)};
  }
  // The worker index hosting `expert`.
  static int64_t WorkerOf(int64_t num_experts, int64_t num_workers, int64_t expert) {
    const int64_t base = num_experts / num_workers, extra = num_experts % num_workers;
    const int64_t boundary = extra * (base + 1);
    return expert < boundary ? expert / (base + 1) : extra + (expert - boundary) / base;
  }

  int64_t num_experts() const { return num_experts_; }
  int64_t num_workers() const { return static_cast<int64_t>(peers_.size()); }
  int32_t peer(int64_t worker) const { return peers_[static_cast<size_t>(worker)]; }
  ExpertRange range(int64_t worker) const { return RangeOf(num_experts_, num_workers(), worker); }
  int64_t worker_of(int64_t expert) const { return WorkerOf(num_experts_, num_workers(), expert); }

 private:
  int64_t num_experts_;
  std::vector<int32_t> peers_;
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_EXPERT_PLACEMENT_H_
