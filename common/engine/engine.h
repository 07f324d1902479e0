// The generation engine of one attention worker: requests in, tokens out, one Step() at a time.
// It owns the sequences, the scheduler and the KV cache and drives AttentionBlock; the experts are
// behind MoeDispatcher (loopback in embedded mode, UCX/NCCL in a cluster).
//
// Thread safety: not thread-safe. One thread (the step loop) calls every method.
#ifndef MOE_COMMON_ENGINE_ENGINE_H_
#define MOE_COMMON_ENGINE_ENGINE_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/engine/attention_block.h"
#include "common/engine/embedded_experts.h"
#include "common/engine/expert_balancer.h"
#include "common/engine/expert_block.h"
#include "common/engine/expert_liveness.h"
#include "common/engine/expert_placement.h"
#include "common/engine/forward_pass.h"
#include "common/engine/kv_cache.h"
#include "common/engine/sampler.h"
#include "common/engine/scheduler.h"
#include "common/kernels/device_spec.h"
#include "common/model/checkpoint.h"
#include "common/model/config.h"
#include "common/model/weights.h"

namespace moe::engine {

struct EngineOptions {
  int64_t max_num_seqs = 256;
  int64_t max_step_tokens = 512;  // token budget per step (chunked prefill)
  int64_t kv_block_size = 16;
  int64_t kv_cache_bytes = int64_t{1} << 30;
  int64_t num_kv_blocks = 0;  // if > 0, overrides kv_cache_bytes
  int64_t max_model_len = 0;  // 0: the model's max_position_embeddings
  absl::Duration moe_timeout = absl::Seconds(30);
  // 1 or 2: with 2, a step of several sequences runs as two micro-batches that ping-pong through
  // the MoE layers (AttentionBlock); outputs are the same bits either way.
  int micro_batches = 1;
  // Where the forward pass runs (`--device`; docs/gpu.md#the-engine-device-seam): the CPU
  // AttentionBlock, or cuda:N's CudaAttentionBlock (weights and KV cache in device memory); the
  // expert shards of embedded mode run there too. cuda needs micro_batches 1.
  kernels::DeviceSpec device;
};

enum class FinishReason { kNone = 0, kStop, kLength, kAbort, kError };
const char* FinishReasonName(FinishReason reason);

struct GenerationRequest {
  std::string id;
  std::vector<int32_t> prompt;
  request::SamplingParams sampling;
  int64_t max_new_tokens = 16;
  int64_t min_new_tokens = 0;
  std::vector<int32_t> stop_token_ids;  // in addition to generation_config's eos (unless ignore_eos)
  bool ignore_eos = false;
  int top_logprobs = 0;  // [0, 20]
  // A migrated request: the last `generated_offset` tokens of `prompt` were generated for it
  // earlier (on another worker). They count as generated: toward max_new_tokens and
  // min_new_tokens, and as the index of the sampler's next draw, so the continuation is the one
  // the first worker would have produced. 0 for a new request.
  int64_t generated_offset = 0;
};

// One event of one request: a generated token, and/or the end of the request.
struct TokenEvent {
  std::string request_id;
  int32_t token_id = -1;  // -1 when the event only reports the end (abort, error)
  float logprob = 0.0f;
  std::vector<TokenLogprob> top_logprobs;
  FinishReason finish_reason = FinishReason::kNone;
  // OK unless finish_reason is kError; then why the step failed, with its code: UNAVAILABLE when a
  // data-plane peer is gone or did not answer in time (retryable on another worker).
  absl::Status error;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

// What the last Step() ran, for metrics.
struct StepStats {
  int64_t num_tokens = 0;  // prefill chunk tokens + decode tokens
  int64_t num_sequences = 0;
  int64_t num_prefill_tokens = 0;  // tokens of segments that were not a single decode token
  bool all_decode = false;         // every segment was one decode token
  int64_t num_preemptions = 0;     // running sequences the scheduler pushed back to the queue
  absl::Duration forward;          // the whole forward pass
  absl::Duration dispatch;         // MoE dispatch, summed over layers
  absl::Duration combine;          // MoE combine (incl. waiting for experts), summed over layers
  // The data plane's own time, summed over layers: dispatch (sending) plus the part of combine's
  // wait the expert workers did not spend on the round (MoeDispatcher::TakeWaitSplit).
  absl::Duration transport;
  absl::Duration expert_wait;  // the part of combine's wait spent in the expert workers
  int64_t expert_resends = 0;  // parts of MoE rounds re-sent to another replica (failover)
  int64_t micro_batches = 1;   // micro-batches the forward pass ran (EngineOptions::micro_batches)
};

class Engine {
 public:
  // Embedded mode: loads the model from `model_dir` and serves its experts in-process as
  // `num_expert_shards` EmbeddedExperts shards, each on `expert_replicas` in-process workers (ignored
  // for a dense model). With replicas, a round fails over from a disconnected worker to another copy.
  static absl::StatusOr<std::unique_ptr<Engine>> CreateEmbedded(const std::string& model_dir,
                                                                const EngineOptions& options,
                                                                int num_expert_shards = 1,
                                                                int expert_replicas = 1);
  // Cluster attention worker: loads only the dense weights; the experts are reached through
  // `transport` (not owned; must outlive the engine) at the peers of `placement`, sending only to
  // the workers `liveness` (not owned, may be null: all) says are live.
  static absl::StatusOr<std::unique_ptr<Engine>> CreateAttentionWorker(
      const std::string& model_dir, const EngineOptions& options, transport::ActivationTransport* transport,
      ExpertPlacement placement, ExpertLiveness* liveness = nullptr);
  ~Engine();

  // Validates and queues a request. INVALID_ARGUMENT naming the field (empty prompt, token id out of
  // range, prompt longer than the context, max_new_tokens < 1, top_logprobs > 20, ...);
  // ALREADY_EXISTS for a duplicate id; RESOURCE_EXHAUSTED if it could never fit in the KV cache.
  absl::Status AddRequest(GenerationRequest request);
  // Ends a request at the next step with FinishReason::kAbort and frees its blocks.
  void Cancel(const std::string& request_id);
  // Runs one iteration. Returns the events it produced. A data-plane failure ends every request in
  // the step with kError (and returns the events, not an error): the engine stays usable.
  std::vector<TokenEvent> Step();
  bool HasWork() const { return !sequences_.empty(); }

  // Runs the prompt alone and returns its last position's logits ([vocab] fp32); leaves no state.
  // Prompts longer than max_step_tokens are prefilled in chunks.
  absl::StatusOr<std::vector<float>> PromptLogits(const std::vector<int32_t>& prompt);
  // Runs several prompts as one batch (one step, no chunking) and returns each one's last-position
  // logits; leaves no state. Batch invariance means each equals PromptLogits of the prompt alone.
  absl::StatusOr<std::vector<std::vector<float>>> BatchLogits(
      const std::vector<std::vector<int32_t>>& prompts);

  // Test hook (embedded mode only): makes expert shard `shard` unreachable, as if its worker died.
  void DisconnectExpertShardForTest(int shard);

  // The expert load balancer (docs/architecture.md#expert-load-balancer). The engine is driven by one
  // thread, so a call between two Step()s is at a step boundary: no MoE round is in flight.
  // Rows dispatched per expert and per expert worker since the last call (empty for a dense model).
  ExpertLoad TakeExpertLoad();
  // The placement the dispatcher uses now (nullptr for a dense model).
  const ExpertPlacement* expert_placement() const;
  // Plans from `window` (PlanExpertReplicas, at most budget_bytes of extra experts per worker) and, in
  // embedded mode, applies the plan: the in-process workers load the extra experts, then the
  // dispatcher switches to the new version. Outputs do not change (each row is computed alone and the
  // combine order is fixed). FAILED_PRECONDITION for a dense model or a cluster attention worker
  // (whose expert workers load the experts themselves); INVALID_ARGUMENT naming budget_bytes when
  // negative; the loader's errors (the old placement then stays).
  absl::StatusOr<BalancePlan> RebalanceExperts(const ExpertLoad& window, int64_t budget_bytes);
  // Switches the dispatcher to `placement` for the following steps (only its extra copies may differ
  // from the current one). Every expert worker it sends an expert to must already hold it: in
  // embedded mode use RebalanceExperts, which loads them first.
  absl::Status SwitchExpertPlacement(ExpertPlacement placement);

  const model::ModelConfig& config() const { return config_; }
  const model::GenerationConfig& generation_config() const { return generation_config_; }
  int64_t max_model_len() const { return max_model_len_; }
  int32_t num_free_blocks() const { return kv_cache_->pool().num_free_blocks(); }
  int64_t num_running() const { return static_cast<int64_t>(scheduler_->num_running()); }
  int64_t num_waiting() const { return static_cast<int64_t>(scheduler_->num_waiting()); }
  int64_t kv_block_size() const { return options_.kv_block_size; }
  int32_t num_blocks() const { return kv_cache_->pool().num_blocks(); }
  uint64_t steps() const { return step_; }
  const StepStats& last_step_stats() const { return last_step_stats_; }
  // The last Step()'s logits: [sequences that sampled a token, vocab] fp32 in plan order (for tests).
  const std::vector<float>& last_step_logits() const { return step_logits_; }

  // MOE_WEIGHTS_MEMORY=huge_pages copies the weights into huge pages in the background while the
  // engine serves from the mapping (model::HugePageSwitch): the dense weights here, switched
  // between two forward passes, and the embedded experts' shards. The copy starts after the first
  // forward pass (so it does not slow the first answer of a one-shot command), or here, earlier:
  // a service calls this once loaded, to have it done before its traffic comes. A no-op for the
  // other choices and once started.
  void StartHugePageSwitch();
  // Starts the copies if need be and waits until they are made and switched to: a benchmark's
  // steady state. Between two Step()s, like the other calls.
  void WaitForHugePages();

  // For benchmarks and load reporting.
  const model::DenseWeights& dense_weights() const { return *dense_; }
  // Embedded mode's experts; nullptr for a cluster attention worker or a dense model.
  const EmbeddedExperts* embedded_experts() const { return embedded_experts_.get(); }

 private:
  struct Sequence {
    GenerationRequest request;
    ScheduledSequence sched;
    std::vector<int32_t> tokens;  // prompt + generated
    int64_t num_generated = 0;
    bool cancelled = false;
  };

  Engine() = default;
  // Loads config, generation config, checkpoint and dense weights.
  absl::Status LoadDense(const std::string& model_dir);
  // Builds the KV cache, attention block and scheduler once the dispatcher (if any) exists.
  absl::Status BuildStepState();
  bool IsStopToken(const Sequence& seq, int32_t token) const;
  absl::Status ValidateLogitsPrompt(const std::vector<int32_t>& prompt) const;
  // Ends `seq` with `reason`: sets the finish fields on its last event of this step (appending one
  // if it has none), releases its KV blocks and destroys it.
  void EndSequence(Sequence* seq, FinishReason reason, std::vector<TokenEvent>* events,
                   absl::Status error = absl::OkStatus());
  // attention_->Forward, after switching the dense weights to their huge-page copy if it is ready.
  absl::Status Forward(uint64_t step, std::span<const BatchSegment> segments, std::vector<float>* logits);

  model::ModelConfig config_;
  model::GenerationConfig generation_config_;
  EngineOptions options_;
  int64_t max_model_len_ = 0;

  // Declaration order = reverse destruction order: the weights view the checkpoint, the embedded
  // experts view the checkpoint, the dispatcher sends from an embedded-experts endpoint.
  std::unique_ptr<model::Checkpoint> checkpoint_;
  std::unique_ptr<model::DenseWeights> dense_;
  // The dense weights' huge-page copy while it is made (null once applied, or when not asked for).
  std::unique_ptr<model::HugePageSwitch> dense_huge_pages_;
  bool huge_pages_in_background_ = false;  // MOE_WEIGHTS_MEMORY=huge_pages on a cpu engine
  bool huge_pages_started_ = false;
  std::unique_ptr<EmbeddedExperts> embedded_experts_;
  std::unique_ptr<MoeDispatcher> dispatcher_;

  std::unique_ptr<KvCache> kv_cache_;
  std::unique_ptr<ForwardPass> attention_;
  std::unique_ptr<Scheduler> scheduler_;
  absl::flat_hash_map<std::string, std::unique_ptr<Sequence>> sequences_;
  absl::flat_hash_map<int64_t, Sequence*> by_sched_id_;
  int64_t next_sched_id_ = 0;
  uint64_t step_ = 0;
  StepStats last_step_stats_;
  std::vector<float> step_logits_;  // reused across steps (see AttentionBlock::Scratch)
};

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_ENGINE_H_
