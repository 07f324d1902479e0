// Embedded mode's expert side: the model's experts split into contiguous shards (as the cluster's
// expert workers would hold them), each served in-process by an ExpertShardServer on its own thread over
// a LoopbackHub. The engine reaches them through attention_endpoint() and placement() exactly as a
// cluster attention worker reaches its expert workers, so embedded mode runs the same data-plane
// code (dispatch, combine, timeouts) as a cluster.
//
// Thread safety: Create and the destructor must not race with other calls; the accessors and
// DisconnectShardForTest may be called from any thread.
#ifndef MOE_COMMON_ENGINE_EMBEDDED_EXPERTS_H_
#define MOE_COMMON_ENGINE_EMBEDDED_EXPERTS_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/engine/compute/expert_compute.h"
#include "common/engine/expert_block.h"
#include "common/engine/expert_liveness.h"
#include "common/engine/expert_placement.h"
#include "common/engine/expert_shard_server.h"
#include "common/kernels/device_spec.h"
#include "common/model/checkpoint.h"
#include "common/model/config.h"
#include "common/transport/loopback/loopback_transport.h"

namespace moe::engine {

class EmbeddedExperts {
 public:
  // The data-plane peer id of the engine's own endpoint (attention worker 0).
  static constexpr int32_t kAttentionPeer = 0;

  // Loads `num_shards` expert shards of `config`'s MoE layers from `checkpoint` (not owned: the
  // weights view its memory, so it must outlive the returned object), each `replicas` times (one
  // in-process expert worker per copy, ExpertPlacement's numbering), prefaults them and starts one
  // server per worker. INVALID_ARGUMENT unless `config` is an MoE model, num_shards is in
  // [1, num_experts] and replicas >= 1; the checkpoint's errors (NOT_FOUND, INVALID_ARGUMENT) naming
  // a tensor. Every shard computes on `device` (CreateExpertCompute): cuda:N without CUDA in the
  // build or without that device is FAILED_PRECONDITION naming it.
  static absl::StatusOr<std::unique_ptr<EmbeddedExperts>> Create(const model::Checkpoint& checkpoint,
                                                                 const model::ModelConfig& config,
                                                                 int num_shards, int replicas = 1,
                                                                 const kernels::DeviceSpec& device = {});
  // Stops every server (joining its thread) before the blocks and the hub go away.
  ~EmbeddedExperts();
  EmbeddedExperts(const EmbeddedExperts&) = delete;
  EmbeddedExperts& operator=(const EmbeddedExperts&) = delete;

  // The endpoint the engine's MoeDispatcher sends dispatches from (peer kAttentionPeer); owned by
  // this object.
  transport::ActivationTransport* attention_endpoint() { return hub_.Endpoint(kAttentionPeer); }
  // Worker w is served at peer kFirstExpertPeerId + w.
  const ExpertPlacement& placement() const { return placement_; }
  // Every worker starts live; a round that gives up on one takes it out for good (nothing restarts
  // an in-process worker).
  ExpertLiveness* liveness() { return &liveness_; }
  // One expert compute per worker, in worker order, whatever the device (for load reporting).
  const std::vector<const ExpertCompute*>& shards() const { return shards_; }
  // The CPU blocks among them (all of them on --device cpu; none on cuda), for the benchmarks
  // that read ExpertBlock directly.
  const std::vector<std::unique_ptr<ExpertBlock>>& blocks() const { return blocks_; }

  // Starts every CPU block's background switch into huge pages (ExpertBlock; the engine decides
  // when), and waits until they are done.
  void SwitchToHugePagesInBackground();
  void WaitForHugePages();

  // Makes worker `worker` unreachable, as if it died: later dispatches to it fail with UNAVAILABLE.
  void DisconnectShardForTest(int worker);

  // Bytes of one expert's weights over all MoE layers (what an extra copy costs a worker).
  int64_t ExpertBytes() const;
  // The balancer's step one: every in-process worker loads the extra experts `placement` gives it
  // (and drops the ones it no longer gives it), so that the dispatcher may switch to it next.
  // INVALID_ARGUMENT when the placement is not of these workers; RESOURCE_EXHAUSTED naming the worker
  // when its extras exceed `budget_bytes`; the checkpoint's errors. Every worker's weights load before
  // any set changes, so on an error every worker still holds what the old placement needs.
  absl::Status LoadExtraExperts(const ExpertPlacement& placement, int64_t budget_bytes);

 private:
  EmbeddedExperts(ExpertPlacement placement, const model::Checkpoint* checkpoint,
                  const model::ModelConfig& config)
      : placement_(std::move(placement)),
        checkpoint_(checkpoint),
        config_(config),
        liveness_(placement_.num_workers()) {
    for (int64_t w = 0; w < placement_.num_workers(); ++w) liveness_.Set(w, true);
  }

  ExpertPlacement placement_;
  const model::Checkpoint* checkpoint_;  // not owned
  model::ModelConfig config_;
  ExpertLiveness liveness_;
  // Declaration order is the reverse of destruction: servers stop before their blocks and endpoints.
  transport::LoopbackHub hub_;
  std::vector<std::unique_ptr<ExpertBlock>> blocks_;           // the shards on the CPU
  std::vector<std::unique_ptr<ExpertCompute>> device_blocks_;  // the shards on a device
  std::vector<const ExpertCompute*> shards_;                   // all of them, in worker order
  std::vector<std::unique_ptr<ExpertShardServer>> servers_;
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_EMBEDDED_EXPERTS_H_
