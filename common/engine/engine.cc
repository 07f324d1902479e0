#include "common/engine/engine.h"

#include <algorithm>
#include <limits>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/kernels/cpu/thread_pool.h"
#include "common/status/status_macros.h"

namespace moe::engine {
namespace {

constexpr int kMaxTopLogprobs = 20;

// Options a backend cannot run with are rejected before the model is read.
absl::Status ValidateDeviceOptions(const EngineOptions& options) {
  if (options.micro_batches != 1 && options.micro_batches != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("micro_batches: must be 1 or 2, got ", options.micro_batches));
  }
  if (options.device.is_cuda() && options.micro_batches != 1) {
    // The CUDA backend runs one stream and stages MoE rounds through the host synchronously, so two
    // micro-batches would not overlap anything: refused rather than silently run as one.
    return absl::InvalidArgumentError(
        absl::StrCat("micro_batches: ", options.micro_batches, " is not supported with device ",
                     options.device.ToString(), " (the CUDA backend runs one micro-batch); use 1"));
  }
  return CheckEngineDevice(options.device);
}

}  // namespace

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone:
      return "none";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kAbort:
      return "abort";
    case FinishReason::kError:
      return "error";
  }
  return "unknown";
}

absl::Status Engine::LoadDense(const std::string& model_dir) {
  ASSIGN_OR_RETURN(config_, model::ModelConfig::FromFile(model_dir + "/config.json"));
  ASSIGN_OR_RETURN(generation_config_, model::GenerationConfig::FromModelDir(model_dir, config_));
  ASSIGN_OR_RETURN(checkpoint_, model::Checkpoint::Open(model_dir));
  ASSIGN_OR_RETURN(dense_, model::LoadDenseWeights(*checkpoint_, config_));
  // A cuda engine uploads the dense weights once (CreateCudaForwardPass): a huge-page copy on the host
  // would only hold a second copy of what the device reads.
  model::WarmUpOptions warm_up = model::WeightsWarmUpOptions();
  if (options_.device.is_cuda()) warm_up.memory = model::WeightsMemory::kMapped;
  // huge_pages: serve from the mapping at once, copy in the background (StartHugePageSwitch).
  huge_pages_in_background_ = warm_up.memory == model::WeightsMemory::kHugePages;
  if (huge_pages_in_background_) warm_up.memory = model::WeightsMemory::kMapped;
  model::PrefaultWeights(*dense_, warm_up);
  return absl::OkStatus();
}

void Engine::StartHugePageSwitch() {
  if (!huge_pages_in_background_ || huge_pages_started_) return;
  huge_pages_started_ = true;
  dense_huge_pages_ = model::HugePageSwitch::Start(*dense_);
  if (embedded_experts_ != nullptr) embedded_experts_->SwitchToHugePagesInBackground();
}

absl::Status Engine::Forward(uint64_t step, std::span<const BatchSegment> segments,
                             std::vector<float>* logits) {
  // Between two forward passes nothing reads the dense weights: the switch can repoint them here.
  if (dense_huge_pages_ != nullptr && dense_huge_pages_->ready()) {
    dense_huge_pages_->Apply(*dense_);
    dense_huge_pages_.reset();
  }
  absl::Status status = attention_->Forward(step, segments, logits);
  // Not before: on a small machine the copying thread would slow the first answer down.
  StartHugePageSwitch();
  return status;
}

void Engine::WaitForHugePages() {
  StartHugePageSwitch();
  if (dense_huge_pages_ != nullptr) {
    dense_huge_pages_->Wait();
    if (dense_huge_pages_->ready()) dense_huge_pages_->Apply(*dense_);
    dense_huge_pages_.reset();
  }
  if (embedded_experts_ != nullptr) embedded_experts_->WaitForHugePages();
}

absl::Status Engine::BuildStepState() {
  max_model_len_ = options_.max_model_len > 0
                       ? std::min(options_.max_model_len, config_.max_position_embeddings)
                       : config_.max_position_embeddings;
  int64_t num_blocks = options_.num_kv_blocks;
  if (num_blocks <= 0) {
    num_blocks = options_.kv_cache_bytes / KvCache::BytesPerBlock(config_, options_.kv_block_size);
  }
  if (num_blocks < 1) return absl::InvalidArgumentError("the KV cache holds no block");
  if (num_blocks > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError("the KV cache has too many blocks");
  }
  // A cuda engine keeps K and V in device memory: the host cache is only the block pool.
  ASSIGN_OR_RETURN(
      kv_cache_,
      KvCache::Create(config_, options_.kv_block_size, static_cast<int32_t>(num_blocks),
                      options_.device.is_cuda() ? KvCache::Storage::kNone : KvCache::Storage::kHost));
  if (options_.device.is_cuda()) {
    CudaForwardOptions cuda;
    cuda.device = options_.device;
    cuda.kv_block_size = options_.kv_block_size;
    cuda.num_kv_blocks = static_cast<int32_t>(num_blocks);
    cuda.kv_cache_bytes = num_blocks * KvCache::BytesPerBlock(config_, options_.kv_block_size);
    ASSIGN_OR_RETURN(attention_, CreateCudaForwardPass(config_, *dense_, dispatcher_.get(), cuda));
  } else {
    attention_ = std::make_unique<AttentionBlock>(config_, dense_.get(), kv_cache_.get(), dispatcher_.get(),
                                                  options_.micro_batches);
  }
  scheduler_ = std::make_unique<Scheduler>(
      SchedulerOptions{options_.max_num_seqs, options_.max_step_tokens, options_.kv_block_size},
      &kv_cache_->pool());
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::CreateEmbedded(const std::string& model_dir,
                                                               const EngineOptions& options,
                                                               int num_expert_shards, int expert_replicas) {
  RETURN_IF_ERROR(ValidateDeviceOptions(options));
  std::unique_ptr<Engine> engine(new Engine());
  engine->options_ = options;
  RETURN_IF_ERROR(engine->LoadDense(model_dir));
  const model::ModelConfig& config = engine->config_;
  if (config.IsMoe()) {
    ASSIGN_OR_RETURN(engine->embedded_experts_,
                     EmbeddedExperts::Create(*engine->checkpoint_, config, num_expert_shards, expert_replicas,
                                             options.device));
    EmbeddedExperts& experts = *engine->embedded_experts_;
    engine->dispatcher_ = std::make_unique<MoeDispatcher>(experts.attention_endpoint(), experts.placement(),
                                                          config.hidden_size, options.moe_timeout,
                                                          expert_replicas > 1 ? experts.liveness() : nullptr);
  }
  RETURN_IF_ERROR(engine->BuildStepState());
  return engine;
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::CreateAttentionWorker(
    const std::string& model_dir, const EngineOptions& options, transport::ActivationTransport* transport,
    ExpertPlacement placement, ExpertLiveness* liveness) {
  RETURN_IF_ERROR(ValidateDeviceOptions(options));
  std::unique_ptr<Engine> engine(new Engine());
  engine->options_ = options;
  RETURN_IF_ERROR(engine->LoadDense(model_dir));
  if (engine->config_.IsMoe()) {
    if (placement.num_experts() != engine->config_.num_experts || placement.num_workers() < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("the expert placement covers ", placement.num_experts(), " experts on ",
                       placement.num_workers(), " workers; the model has ", engine->config_.num_experts));
    }
    RETURN_IF_ERROR(ExpertPlacement::Validate(placement.num_experts(), placement.num_home_workers(),
                                              placement.replicas()));
    if (liveness != nullptr && liveness->num_workers() != placement.num_workers()) {
      return absl::InvalidArgumentError(absl::StrCat("expert liveness of ", liveness->num_workers(),
                                                     " workers for a placement of ",
                                                     placement.num_workers()));
    }
    engine->dispatcher_ = std::make_unique<MoeDispatcher>(
        transport, std::move(placement), engine->config_.hidden_size, options.moe_timeout, liveness);
  }
  RETURN_IF_ERROR(engine->BuildStepState());
  return engine;
}

// The members' declaration order tears down in the right order (see engine.h).
Engine::~Engine() = default;

absl::Status Engine::AddRequest(GenerationRequest request) {
  if (request.prompt.empty()) return absl::InvalidArgumentError("prompt: must not be empty");
  for (int32_t id : request.prompt) {
    if (id < 0 || id >= config_.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt: token id ", id, " is outside the vocabulary [0, ", config_.vocab_size, ")"));
    }
  }
  const int64_t prompt_len = static_cast<int64_t>(request.prompt.size());
  if (prompt_len >= max_model_len_) {
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", prompt_len,
                                                   " tokens leave no room to generate in the context of ",
                                                   max_model_len_, " tokens"));
  }
  if (request.max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens: must be >= 1, got ", request.max_new_tokens));
  }
  if (request.min_new_tokens < 0) {
    return absl::InvalidArgumentError("min_new_tokens: must be >= 0");
  }
  if (request.top_logprobs < 0 || request.top_logprobs > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_logprobs: must be in [0, ", kMaxTopLogprobs, "], got ", request.top_logprobs));
  }
  for (int32_t id : request.stop_token_ids) {
    if (id < 0 || id >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("stop_token_ids: ", id, " is out of range"));
    }
  }
  if (absl::Status s = request::ValidateSamplingParams(request.sampling); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("sampling: ", s.message()));
  }
  if (request.generated_offset < 0 || request.generated_offset >= prompt_len ||
      request.generated_offset >= request.max_new_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("generated_offset: must be in [0, min(prompt length, "
                     "max_new_tokens) - 1], got ",
                     request.generated_offset));
  }
  if (sequences_.contains(request.id)) {
    return absl::AlreadyExistsError(absl::StrCat("request id ", request.id, " is already running"));
  }
  const int64_t total =
      std::min(prompt_len - request.generated_offset + request.max_new_tokens, max_model_len_);
  if (KvCacheBlockPool::BlocksFor(total, options_.kv_block_size) > kv_cache_->pool().num_blocks()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("request needs ", total, " tokens of KV cache; this worker holds ",
                     int64_t{kv_cache_->pool().num_blocks()} * options_.kv_block_size));
  }
  auto seq = std::make_unique<Sequence>();
  seq->tokens = request.prompt;
  seq->num_generated = request.generated_offset;
  seq->request = std::move(request);
  seq->sched.id = next_sched_id_++;
  seq->sched.num_tokens = prompt_len;
  Sequence* raw = seq.get();
  by_sched_id_[raw->sched.id] = raw;
  sequences_[raw->request.id] = std::move(seq);
  scheduler_->Enqueue(&raw->sched);
  return absl::OkStatus();
}

void Engine::Cancel(const std::string& request_id) {
  auto it = sequences_.find(request_id);
  if (it != sequences_.end()) it->second->cancelled = true;
}

bool Engine::IsStopToken(const Sequence& seq, int32_t token) const {
  const auto& stops = seq.request.stop_token_ids;
  if (std::find(stops.begin(), stops.end(), token) != stops.end()) return true;
  if (seq.request.ignore_eos) return false;
  const auto& eos = generation_config_.eos_token_ids;
  return std::find(eos.begin(), eos.end(), token) != eos.end();
}

void Engine::EndSequence(Sequence* seq, FinishReason reason, std::vector<TokenEvent>* events,
                         absl::Status error) {
  if (events->empty() || events->back().request_id != seq->request.id ||
      events->back().finish_reason != FinishReason::kNone) {
    TokenEvent event;
    event.request_id = seq->request.id;
    events->push_back(std::move(event));
  }
  TokenEvent& last = events->back();
  last.finish_reason = reason;
  last.error = std::move(error);
  last.prompt_tokens = static_cast<int64_t>(seq->request.prompt.size());
  last.completion_tokens = seq->num_generated;
  scheduler_->Remove(&seq->sched);
  by_sched_id_.erase(seq->sched.id);
  sequences_.erase(seq->request.id);  // destroys seq
}

std::vector<TokenEvent> Engine::Step() {
  std::vector<TokenEvent> events;
  // Cancellations take effect before planning, so a cancelled sequence frees its blocks this step.
  std::vector<Sequence*> cancelled;
  for (auto& [id, seq] : sequences_) {
    if (seq->cancelled) cancelled.push_back(seq.get());
  }
  for (Sequence* seq : cancelled) EndSequence(seq, FinishReason::kAbort, &events);

  std::vector<ScheduledSequence*> preempted;
  std::vector<PlannedSegment> plan = scheduler_->Plan(&preempted);
  if (plan.empty()) return events;
  ++step_;

  std::vector<BatchSegment> segments;
  segments.reserve(plan.size());
  StepStats stats;
  stats.all_decode = true;
  for (const PlannedSegment& p : plan) {
    Sequence* seq = by_sched_id_.at(p.seq->id);
    segments.push_back(BatchSegment{seq->tokens.data() + p.start_pos, p.num_tokens, p.start_pos,
                                    &p.seq->blocks, p.completes});
    const bool decode = p.num_tokens == 1 && seq->num_generated > 0;
    stats.all_decode = stats.all_decode && decode;
    if (!decode) stats.num_prefill_tokens += p.num_tokens;
    stats.num_tokens += p.num_tokens;
  }
  stats.num_sequences = static_cast<int64_t>(plan.size());
  stats.num_preemptions = static_cast<int64_t>(preempted.size());
  std::vector<float>& logits = step_logits_;
  const absl::Time forward_start = absl::Now();
  if (dispatcher_ != nullptr) {
    dispatcher_->TakeTimes();
    dispatcher_->TakeWaitSplit();
    dispatcher_->TakeResends();
  }
  absl::Status status = Forward(step_, segments, &logits);
  stats.forward = absl::Now() - forward_start;
  stats.micro_batches = attention_->last_micro_batches();
  if (dispatcher_ != nullptr) {
    std::tie(stats.dispatch, stats.combine) = dispatcher_->TakeTimes();
    const MoeDispatcher::WaitSplit split = dispatcher_->TakeWaitSplit();
    stats.transport = stats.dispatch + split.transport;
    stats.expert_wait = split.expert_wait;
    stats.expert_resends = static_cast<int64_t>(dispatcher_->TakeResends());
  }
  last_step_stats_ = stats;
  if (!status.ok()) {
    for (const PlannedSegment& p : plan) {
      EndSequence(by_sched_id_.at(p.seq->id), FinishReason::kError, &events, status);
    }
    return events;
  }

  const int64_t vocab = config_.vocab_size;
  // The sequences that sample this step, in row order (row i of `logits` is sampled[i]'s).
  std::vector<Sequence*> sampled;
  for (const PlannedSegment& p : plan) {
    Sequence* seq = by_sched_id_.at(p.seq->id);
    seq->sched.num_computed += p.num_tokens;
    if (p.completes) sampled.push_back(seq);
  }
  // Each row is sampled from its own logits and its own sequence's state alone (the sampler keeps
  // no state; its RNG is counter-based), so the rows run in parallel on the kernels' pool: at batch
  // 32 the whole-vocabulary log-softmax of each row is a tenth of a CPU decode step. The events
  // then follow in row order as before.
  std::vector<TokenEvent> sampled_events(sampled.size());
  kernels::cpu::ThreadPool::Global().ParallelFor(static_cast<int64_t>(sampled.size()), [&](int64_t row) {
    const Sequence* seq = sampled[static_cast<size_t>(row)];
    std::span<float> row_logits(logits.data() + row * vocab, static_cast<size_t>(vocab));
    TokenEvent& event = sampled_events[static_cast<size_t>(row)];
    event.request_id = seq->request.id;
    if (seq->request.top_logprobs > 0) {
      event.top_logprobs = Sampler::TopLogprobs(row_logits, seq->request.top_logprobs);
    }
    if (seq->num_generated < seq->request.min_new_tokens && !seq->request.ignore_eos) {
      for (int64_t eos : generation_config_.eos_token_ids) {
        if (eos >= 0 && eos < vocab) row_logits[eos] = -std::numeric_limits<float>::infinity();
      }
    }
    // seq->tokens is prompt + generated: the presence/frequency penalties see only the last
    // num_generated of them.
    const SampleResult sample =
        Sampler::Sample(row_logits, seq->tokens, static_cast<size_t>(seq->num_generated),
                        seq->request.sampling, static_cast<uint64_t>(seq->num_generated));
    event.token_id = sample.token_id;
    event.logprob = sample.logprob;
  });
  for (size_t i = 0; i < sampled.size(); ++i) {
    Sequence* seq = sampled[i];
    const int32_t token = sampled_events[i].token_id;
    seq->tokens.push_back(token);
    seq->num_generated += 1;
    seq->sched.num_tokens += 1;
    events.push_back(std::move(sampled_events[i]));
    if (IsStopToken(*seq, token)) {
      EndSequence(seq, FinishReason::kStop, &events);
    } else if (seq->num_generated >= seq->request.max_new_tokens ||
               static_cast<int64_t>(seq->tokens.size()) >= max_model_len_) {
      EndSequence(seq, FinishReason::kLength, &events);
    }
  }
  return events;
}

absl::Status Engine::ValidateLogitsPrompt(const std::vector<int32_t>& prompt) const {
  if (prompt.empty()) return absl::InvalidArgumentError("ids: must not be empty");
  for (int32_t id : prompt) {
    if (id < 0 || id >= config_.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("ids: token id ", id, " is outside the vocabulary [0, ", config_.vocab_size, ")"));
    }
  }
  if (static_cast<int64_t>(prompt.size()) > max_model_len_) {
    return absl::InvalidArgumentError(
        absl::StrCat("ids: ", prompt.size(), " tokens exceed the context length ", max_model_len_));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::vector<float>>> Engine::BatchLogits(
    const std::vector<std::vector<int32_t>>& prompts) {
  std::vector<std::vector<int32_t>> tables(prompts.size());
  std::vector<BatchSegment> segments;
  absl::Status status;
  for (size_t i = 0; i < prompts.size() && status.ok(); ++i) {
    status = ValidateLogitsPrompt(prompts[i]);
    if (!status.ok()) break;
    const int64_t n = static_cast<int64_t>(prompts[i].size());
    status = kv_cache_->pool().Allocate(KvCacheBlockPool::BlocksFor(n, options_.kv_block_size), &tables[i]);
    segments.push_back(BatchSegment{prompts[i].data(), n, 0, &tables[i], true});
  }
  std::vector<float> logits;
  if (status.ok()) status = Forward(++step_, segments, &logits);
  for (auto& table : tables) {
    if (!table.empty()) kv_cache_->pool().Free(table).IgnoreError();
  }
  RETURN_IF_ERROR(status);
  std::vector<std::vector<float>> result(prompts.size());
  const size_t vocab = static_cast<size_t>(config_.vocab_size);
  for (size_t i = 0; i < prompts.size(); ++i) {
    result[i].assign(logits.begin() + i * vocab, logits.begin() + (i + 1) * vocab);
  }
  return result;
}

void Engine::DisconnectExpertShardForTest(int shard) {
  if (embedded_experts_ != nullptr) embedded_experts_->DisconnectShardForTest(shard);
}

ExpertLoad Engine::TakeExpertLoad() {
  return dispatcher_ != nullptr ? dispatcher_->TakeLoad() : ExpertLoad();
}

const ExpertPlacement* Engine::expert_placement() const {
  return dispatcher_ != nullptr ? &dispatcher_->placement() : nullptr;
}

absl::StatusOr<BalancePlan> Engine::RebalanceExperts(const ExpertLoad& window, int64_t budget_bytes) {
  if (dispatcher_ == nullptr || embedded_experts_ == nullptr) {
    return absl::FailedPreconditionError("rebalancing experts needs an embedded-mode MoE engine");
  }
  if (budget_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat("budget_bytes: must be >= 0, got ", budget_bytes));
  }
  ASSIGN_OR_RETURN(BalancePlan plan, PlanExpertReplicas(dispatcher_->placement(), window.expert_rows,
                                                        budget_bytes / embedded_experts_->ExpertBytes()));
  // Load first, then switch: no round is ever sent to a worker that does not hold the expert yet.
  RETURN_IF_ERROR(embedded_experts_->LoadExtraExperts(plan.placement, budget_bytes));
  RETURN_IF_ERROR(dispatcher_->SetPlacement(plan.placement));
  return plan;
}

absl::Status Engine::SwitchExpertPlacement(ExpertPlacement placement) {
  if (dispatcher_ == nullptr) return absl::FailedPreconditionError("a dense model has no expert placement");
  return dispatcher_->SetPlacement(std::move(placement));
}

absl::StatusOr<std::vector<float>> Engine::PromptLogits(const std::vector<int32_t>& prompt) {
  RETURN_IF_ERROR(ValidateLogitsPrompt(prompt));
  const int64_t n = static_cast<int64_t>(prompt.size());
  std::vector<int32_t> blocks;
  RETURN_IF_ERROR(
      kv_cache_->pool().Allocate(KvCacheBlockPool::BlocksFor(n, options_.kv_block_size), &blocks));
  std::vector<float> logits;
  std::vector<float> chunk_logits;
  absl::Status status;
  for (int64_t start = 0; start < n && status.ok(); start += options_.max_step_tokens) {
    const int64_t len = std::min(options_.max_step_tokens, n - start);
    const BatchSegment segment{prompt.data() + start, len, start, &blocks, start + len == n};
    status = Forward(++step_, std::span<const BatchSegment>(&segment, 1), &chunk_logits);
    if (status.ok() && start + len == n) logits = std::move(chunk_logits);
  }
  kv_cache_->pool().Free(blocks).IgnoreError();
  RETURN_IF_ERROR(status);
  return logits;
}

}  // namespace moe::engine
