#include "common/engine/cuda/cuda_attention_block.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/engine/attention_block.h"
#include "common/kernels/cpu/kernels.h"
#include "common/status/status_macros.h"

namespace moe::engine {
namespace cuda = ::moe::kernels::cuda;

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
// Device memory kept free beyond the weights and the KV cache: the attention kernels' scratch (at
// most 256 MiB, docs/gpu.md), cuBLASLt's workspace and the per-step activations of a few thousand
// tokens.
constexpr int64_t kHeadroomBytes = int64_t{768} << 20;

int64_t LinearDeviceBytes(const LinearWeight& w) {
  int64_t bytes = w.out_features * w.in_features * static_cast<int64_t>(DTypeSize(w.dtype));
  if (w.dtype == DType::kF8E4M3) {
    bytes +=
        cuda::PackedWeightScaleCount(w.out_features, w.in_features) * static_cast<int64_t>(sizeof(float));
  }
  return bytes;
}

bool HasMlp(const model::MlpWeights& w) {
  return w.gate_proj.dtype != DType::kUnknown;
}

}  // namespace

CudaAttentionBlock::CudaAttentionBlock(const model::ModelConfig& config, MoeDispatcher* dispatcher,
                                       int ordinal)
    : config_(config), dispatcher_(dispatcher), ordinal_(ordinal) {}

absl::StatusOr<std::unique_ptr<CudaAttentionBlock>> CudaAttentionBlock::Create(
    const model::ModelConfig& config, const model::DenseWeights& weights, MoeDispatcher* dispatcher,
    const CudaForwardOptions& options) {
  if (!options.device.is_cuda()) {
    return absl::InvalidArgumentError(
        absl::StrCat("device: the CUDA backend needs a cuda device, got ", options.device.ToString()));
  }
  if (options.num_kv_blocks < 1 || options.kv_block_size < 1) {
    return absl::InvalidArgumentError("the KV cache holds no block");
  }
  RETURN_IF_ERROR(cuda::SetDevice(options.device.ordinal));
  std::unique_ptr<CudaAttentionBlock> block(
      new CudaAttentionBlock(config, dispatcher, options.device.ordinal));
  RETURN_IF_ERROR(block->Init(weights, options));
  return block;
}

CudaAttentionBlock::~CudaAttentionBlock() {
  if (cuda::SetDevice(ordinal_).ok()) {
    if (stream_ != nullptr) cuda::Synchronize(stream_).IgnoreError();
  }
  blas_.reset();
  for (Scratch* s :
       {&ids_, &positions_, &token_segment_, &token_pos_, &tables_, &x_, &h_, &branch_, &q_, &k_, &v_, &attn_,
        &mlp_gate_, &mlp_up_, &router_logits_, &expert_ids_, &expert_weights_, &last_, &logits_}) {
    cuda::Free(s->ptr);
  }
  for (void* p : allocations_) cuda::Free(p);
  if (stream_ != nullptr) cuda::DestroyStream(stream_).IgnoreError();
}

absl::StatusOr<void*> CudaAttentionBlock::Alloc(size_t bytes, const std::string& what) {
  ASSIGN_OR_RETURN(void* p, cuda::Malloc(std::max<size_t>(bytes, 1), what));
  allocations_.push_back(p);
  return p;
}

absl::StatusOr<const bf16*> CudaAttentionBlock::UploadBf16(const bf16* host, int64_t count,
                                                           const std::string& what) {
  if (host == nullptr) return absl::InternalError(absl::StrCat(what, ": no host tensor"));
  const size_t bytes = static_cast<size_t>(count) * sizeof(bf16);
  ASSIGN_OR_RETURN(void* d, Alloc(bytes, what));
  RETURN_IF_ERROR(cuda::CopyToDevice(d, host, bytes, stream_));
  return static_cast<const bf16*>(d);
}

absl::StatusOr<cuda::DeviceLinearWeight> CudaAttentionBlock::UploadLinear(const LinearWeight& w,
                                                                          const std::string& what) {
  cuda::DeviceLinearWeight d;
  d.dtype = w.dtype;
  d.out_features = w.out_features;
  d.in_features = w.in_features;
  const size_t data_bytes =
      static_cast<size_t>(w.out_features) * static_cast<size_t>(w.in_features) * DTypeSize(w.dtype);
  if (w.dtype == DType::kBF16) {
    ASSIGN_OR_RETURN(d.data,
                     UploadBf16(static_cast<const bf16*>(w.data), w.out_features * w.in_features, what));
    return d;
  }
  if (w.dtype != DType::kF8E4M3) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": dtype ", std::string(DTypeName(w.dtype)),
                     " is not supported by the CUDA backend (BF16 or F8_E4M3)"));
  }
  if (w.in_features % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": FP8 weight with in_features ", w.in_features,
                                                   " (cuBLASLt needs a multiple of 16)"));
  }
  ASSIGN_OR_RETURN(void* data, Alloc(data_bytes, what));
  RETURN_IF_ERROR(cuda::CopyToDevice(data, w.data, data_bytes, stream_));
  // Block scales repacked once on the host into cuBLASLt's layout; the FP8 codes stay as they are.
  std::vector<float> packed(static_cast<size_t>(cuda::PackedWeightScaleCount(w.out_features, w.in_features)));
  cuda::PackWeightScales(w.scale_inv, w.out_features, w.in_features, packed.data());
  const size_t scale_bytes = packed.size() * sizeof(float);
  ASSIGN_OR_RETURN(void* scale, Alloc(scale_bytes, absl::StrCat(what, " block scales")));
  RETURN_IF_ERROR(cuda::CopyToDevice(scale, packed.data(), scale_bytes, stream_));
  // The copy is from a pageable host buffer that goes out of scope: finish it first.
  RETURN_IF_ERROR(cuda::Synchronize(stream_));
  d.data = data;
  d.scale = static_cast<const float*>(scale);
  return d;
}

absl::Status CudaAttentionBlock::Init(const model::DenseWeights& weights, const CudaForwardOptions& options) {
  const std::string device = options.device.ToString();
  const int64_t hidden = config_.hidden_size;
  const int64_t num_layers = config_.num_hidden_layers;
  block_size_ = options.kv_block_size;
  if (static_cast<int64_t>(weights.layers.size()) != num_layers) {
    return absl::InternalError("dense weights and config disagree on the number of layers");
  }

  // What the weights will take, checked against the free memory before anything is allocated.
  const kernels::cpu::RopeTable rope =
      kernels::cpu::BuildRopeTable(RopeParamsOf(config_), config_.head_dim, config_.max_position_embeddings);
  max_positions_ = rope.max_positions;
  const bool tied = weights.lm_head.dtype == DType::kBF16 && weights.lm_head.data == weights.embed_tokens;
  int64_t need = config_.vocab_size * hidden * 2 + hidden * 2;  // embeddings, final norm
  if (!tied) need += LinearDeviceBytes(weights.lm_head);
  need += static_cast<int64_t>((rope.cos.size() + rope.sin.size()) * sizeof(bf16));
  for (int64_t l = 0; l < num_layers; ++l) {
    const model::AttentionLayerWeights& lw = weights.layers[static_cast<size_t>(l)];
    need += LinearDeviceBytes(lw.q_proj) + LinearDeviceBytes(lw.k_proj) + LinearDeviceBytes(lw.v_proj) +
            LinearDeviceBytes(lw.o_proj) + 2 * hidden * 2 + 2 * config_.head_dim * 2;
    if (lw.router != nullptr) need += config_.num_experts * hidden * 2;
    if (HasMlp(lw.dense_mlp)) {
      need += LinearDeviceBytes(lw.dense_mlp.gate_proj) + LinearDeviceBytes(lw.dense_mlp.up_proj) +
              LinearDeviceBytes(lw.dense_mlp.down_proj);
    }
  }
  size_t free_bytes = 0, total_bytes = 0;
  RETURN_IF_ERROR(cuda::MemoryInfo(&free_bytes, &total_bytes));
  if (need + kHeadroomBytes > static_cast<int64_t>(free_bytes)) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "the dense weights need %.2f GiB of device memory (plus %.2f GiB of working space); %s has %.2f GiB "
        "free of %.2f GiB",
        need / kGiB, kHeadroomBytes / kGiB, device, free_bytes / kGiB, total_bytes / kGiB));
  }
  weight_bytes_ = need;

  ASSIGN_OR_RETURN(stream_, cuda::CreateStream());
  ASSIGN_OR_RETURN(blas_, cuda::Blas::Create());

  ASSIGN_OR_RETURN(embed_tokens_,
                   UploadBf16(weights.embed_tokens, config_.vocab_size * hidden, "embed_tokens"));
  ASSIGN_OR_RETURN(final_norm_, UploadBf16(weights.final_norm, hidden, "the final norm"));
  if (tied) {
    lm_head_ = cuda::DeviceLinearWeight{DType::kBF16, config_.vocab_size, hidden, embed_tokens_, nullptr};
  } else {
    ASSIGN_OR_RETURN(lm_head_, UploadLinear(weights.lm_head, "lm_head"));
  }
  ASSIGN_OR_RETURN(rope_.cos,
                   UploadBf16(rope.cos.data(), static_cast<int64_t>(rope.cos.size()), "the RoPE table"));
  ASSIGN_OR_RETURN(rope_.sin,
                   UploadBf16(rope.sin.data(), static_cast<int64_t>(rope.sin.size()), "the RoPE table"));
  rope_.head_dim = rope.head_dim;
  rope_.max_positions = rope.max_positions;

  layers_.resize(static_cast<size_t>(num_layers));
  for (int64_t l = 0; l < num_layers; ++l) {
    const model::AttentionLayerWeights& lw = weights.layers[static_cast<size_t>(l)];
    Layer& d = layers_[static_cast<size_t>(l)];
    const std::string p = absl::StrCat("layer ", l, " ");
    ASSIGN_OR_RETURN(d.input_layernorm, UploadBf16(lw.input_layernorm, hidden, p + "input_layernorm"));
    ASSIGN_OR_RETURN(d.post_attention_layernorm,
                     UploadBf16(lw.post_attention_layernorm, hidden, p + "post_attention_layernorm"));
    ASSIGN_OR_RETURN(d.q_norm, UploadBf16(lw.q_norm, config_.head_dim, p + "q_norm"));
    ASSIGN_OR_RETURN(d.k_norm, UploadBf16(lw.k_norm, config_.head_dim, p + "k_norm"));
    ASSIGN_OR_RETURN(d.q_proj, UploadLinear(lw.q_proj, p + "q_proj"));
    ASSIGN_OR_RETURN(d.k_proj, UploadLinear(lw.k_proj, p + "k_proj"));
    ASSIGN_OR_RETURN(d.v_proj, UploadLinear(lw.v_proj, p + "v_proj"));
    ASSIGN_OR_RETURN(d.o_proj, UploadLinear(lw.o_proj, p + "o_proj"));
    if (config_.IsMoeLayer(l)) {
      ASSIGN_OR_RETURN(const bf16* router, UploadBf16(lw.router, config_.num_experts * hidden, p + "router"));
      d.router = cuda::DeviceLinearWeight{DType::kBF16, config_.num_experts, hidden, router, nullptr};
    } else {
      ASSIGN_OR_RETURN(d.gate_proj, UploadLinear(lw.dense_mlp.gate_proj, p + "mlp.gate_proj"));
      ASSIGN_OR_RETURN(d.up_proj, UploadLinear(lw.dense_mlp.up_proj, p + "mlp.up_proj"));
      ASSIGN_OR_RETURN(d.down_proj, UploadLinear(lw.dense_mlp.down_proj, p + "mlp.down_proj"));
    }
  }
  RETURN_IF_ERROR(cuda::Synchronize(stream_));

  // The paged KV cache: the engine's block count, every layer's K and V in one allocation.
  const int64_t per_layer = int64_t{options.num_kv_blocks} * block_size_ * config_.num_key_value_heads *
                            config_.head_dim;  // elements of one layer's K (or V)
  kv_cache_bytes_ = 2 * num_layers * per_layer * static_cast<int64_t>(sizeof(bf16));
  RETURN_IF_ERROR(cuda::MemoryInfo(&free_bytes, &total_bytes));
  if (kv_cache_bytes_ + kHeadroomBytes > static_cast<int64_t>(free_bytes)) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "kv_cache_bytes: a KV cache of %.2f GiB (%d blocks of %d tokens) does not fit in the %.2f GiB free "
        "on "
        "%s after the weights (%.2f GiB of working space kept); ask for less (--kv-cache-gib / "
        "--kv_cache_gib / MOE_KV_CACHE_GIB)",
        kv_cache_bytes_ / kGiB, options.num_kv_blocks, block_size_, free_bytes / kGiB, device,
        kHeadroomBytes / kGiB));
  }
  ASSIGN_OR_RETURN(void* kv, Alloc(static_cast<size_t>(kv_cache_bytes_), "the KV cache (kv_cache_bytes)"));
  bf16* base = static_cast<bf16*>(kv);
  for (int64_t l = 0; l < num_layers; ++l) {
    bf16* k = base + 2 * l * per_layer;
    layers_[static_cast<size_t>(l)].kv = cuda::DevicePagedKv{
        k, k + per_layer, options.num_kv_blocks, block_size_, config_.num_key_value_heads, config_.head_dim};
  }
  return absl::OkStatus();
}

template <typename T>
absl::StatusOr<T*> CudaAttentionBlock::Ensure(Scratch* s, size_t count, const char* what) {
  const size_t bytes = std::max<size_t>(count, 1) * sizeof(T);
  if (s->bytes < bytes) {
    // Grown geometrically so that a slowly growing batch does not reallocate every step.
    const size_t grown = std::max(bytes, s->bytes + s->bytes / 2);
    RETURN_IF_ERROR(cuda::Synchronize(stream_));
    cuda::Free(s->ptr);
    s->ptr = nullptr;
    s->bytes = 0;
    ASSIGN_OR_RETURN(s->ptr, cuda::Malloc(grown, absl::StrCat("the step's ", what)));
    s->bytes = grown;
  }
  return static_cast<T*>(s->ptr);
}

absl::Status CudaAttentionBlock::Mlp(uint64_t step, int64_t layer, int64_t n) {
  const int64_t hidden = config_.hidden_size;
  const Layer& d = layers_[static_cast<size_t>(layer)];
  bf16* h = static_cast<bf16*>(h_.ptr);
  bf16* branch = static_cast<bf16*>(branch_.ptr);
  if (!config_.IsMoeLayer(layer)) {
    const int64_t inter = d.gate_proj.out_features;
    ASSIGN_OR_RETURN(bf16 * gate, Ensure<bf16>(&mlp_gate_, static_cast<size_t>(n * inter), "MLP gate"));
    ASSIGN_OR_RETURN(bf16 * up, Ensure<bf16>(&mlp_up_, static_cast<size_t>(n * inter), "MLP up"));
    RETURN_IF_ERROR(blas_->Linear(h, hidden, n, d.gate_proj, gate, inter, stream_));
    RETURN_IF_ERROR(blas_->Linear(h, hidden, n, d.up_proj, up, inter, stream_));
    RETURN_IF_ERROR(cuda::SiluMul(gate, up, n * inter, gate, stream_));
    return blas_->Linear(gate, inter, n, d.down_proj, branch, hidden, stream_);
  }
  if (dispatcher_ == nullptr) return absl::FailedPreconditionError("MoE layer without an expert dispatcher");
  const int64_t num_experts = config_.num_experts;
  const int64_t k = config_.num_experts_per_tok;
  ASSIGN_OR_RETURN(bf16 * router_logits,
                   Ensure<bf16>(&router_logits_, static_cast<size_t>(n * num_experts), "router logits"));
  ASSIGN_OR_RETURN(int32_t * ids, Ensure<int32_t>(&expert_ids_, static_cast<size_t>(n * k), "expert ids"));
  ASSIGN_OR_RETURN(float* weights,
                   Ensure<float>(&expert_weights_, static_cast<size_t>(n * k), "expert weights"));
  RETURN_IF_ERROR(blas_->Linear(h, hidden, n, d.router, router_logits, num_experts, stream_));
  RETURN_IF_ERROR(
      cuda::TopKSoftmax(router_logits, n, num_experts, k, config_.norm_topk_prob, ids, weights, stream_));
  // Host staging for the dispatcher (see the header): the rows and the gate's choice come down...
  host_h_.resize(static_cast<size_t>(n * hidden));
  host_branch_.resize(static_cast<size_t>(n * hidden));
  host_expert_ids_.resize(static_cast<size_t>(n * k));
  host_expert_weights_.resize(static_cast<size_t>(n * k));
  RETURN_IF_ERROR(cuda::CopyToHost(host_h_.data(), h, host_h_.size() * sizeof(bf16), stream_));
  RETURN_IF_ERROR(
      cuda::CopyToHost(host_expert_ids_.data(), ids, host_expert_ids_.size() * sizeof(int32_t), stream_));
  RETURN_IF_ERROR(cuda::CopyToHost(host_expert_weights_.data(), weights,
                                   host_expert_weights_.size() * sizeof(float), stream_));
  RETURN_IF_ERROR(cuda::Synchronize(stream_));
  // ...the round runs on the data plane (host_h_ stays untouched until Combine returns: re-sends)...
  ASSIGN_OR_RETURN(DispatchHandle handle,
                   dispatcher_->Dispatch(step, static_cast<uint32_t>(layer), 0, host_h_.data(), n,
                                         host_expert_ids_.data(), host_expert_weights_.data(), k));
  RETURN_IF_ERROR(dispatcher_->Combine(handle, host_branch_.data()));
  // ...and the combined output goes back up.
  RETURN_IF_ERROR(
      cuda::CopyToDevice(branch, host_branch_.data(), host_branch_.size() * sizeof(bf16), stream_));
  return absl::OkStatus();
}

absl::Status CudaAttentionBlock::Forward(uint64_t step, std::span<const BatchSegment> segments,
                                         std::vector<float>* logits) {
  const int64_t hidden = config_.hidden_size;
  const int64_t num_heads = config_.num_attention_heads;
  const int64_t num_kv_heads = config_.num_key_value_heads;
  const int64_t head_dim = config_.head_dim;
  const int64_t q_width = num_heads * head_dim;
  const int64_t kv_width = num_kv_heads * head_dim;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));

  int64_t n = 0;
  RETURN_IF_ERROR(ValidateSegments(config_, max_positions_, block_size_, segments, &n));
  if (n == 0) return absl::OkStatus();
  // The step loop may run on another thread than the one that created the block.
  RETURN_IF_ERROR(cuda::SetDevice(ordinal_));

  // The step's token ids, positions and block tables (one row of table_stride entries a segment).
  int64_t table_stride = 1, max_len = 0;
  for (const BatchSegment& s : segments) {
    table_stride = std::max(table_stride, static_cast<int64_t>(s.block_table->size()));
    max_len = std::max(max_len, s.start_pos + s.num_tokens);
  }
  host_ids_.clear();
  host_positions_.clear();
  host_segment_.clear();
  host_pos_.clear();
  host_tables_.assign(segments.size() * static_cast<size_t>(table_stride), 0);
  for (size_t i = 0; i < segments.size(); ++i) {
    const BatchSegment& s = segments[i];
    for (int64_t t = 0; t < s.num_tokens; ++t) {
      host_ids_.push_back(s.token_ids[t]);
      host_positions_.push_back(s.start_pos + t);
      host_segment_.push_back(static_cast<int32_t>(i));
      host_pos_.push_back(static_cast<int32_t>(s.start_pos + t));
    }
    std::copy(s.block_table->begin(), s.block_table->end(),
              host_tables_.begin() + static_cast<std::ptrdiff_t>(i * static_cast<size_t>(table_stride)));
  }
  const size_t un = static_cast<size_t>(n);
  ASSIGN_OR_RETURN(int32_t * ids, Ensure<int32_t>(&ids_, un, "token ids"));
  ASSIGN_OR_RETURN(int64_t * positions, Ensure<int64_t>(&positions_, un, "positions"));
  ASSIGN_OR_RETURN(int32_t * token_segment, Ensure<int32_t>(&token_segment_, un, "token segments"));
  ASSIGN_OR_RETURN(int32_t * token_pos, Ensure<int32_t>(&token_pos_, un, "token positions"));
  ASSIGN_OR_RETURN(int32_t * tables, Ensure<int32_t>(&tables_, host_tables_.size(), "block tables"));
  ASSIGN_OR_RETURN(bf16 * x, Ensure<bf16>(&x_, un * hidden, "hidden states"));
  ASSIGN_OR_RETURN(bf16 * h, Ensure<bf16>(&h_, un * hidden, "normed hidden states"));
  ASSIGN_OR_RETURN(bf16 * branch, Ensure<bf16>(&branch_, un * hidden, "branch output"));
  ASSIGN_OR_RETURN(bf16 * q, Ensure<bf16>(&q_, un * q_width, "queries"));
  ASSIGN_OR_RETURN(bf16 * k, Ensure<bf16>(&k_, un * kv_width, "keys"));
  ASSIGN_OR_RETURN(bf16 * v, Ensure<bf16>(&v_, un * kv_width, "values"));
  ASSIGN_OR_RETURN(bf16 * attn, Ensure<bf16>(&attn_, un * q_width, "attention output"));
  RETURN_IF_ERROR(cuda::CopyToDevice(ids, host_ids_.data(), un * sizeof(int32_t), stream_));
  RETURN_IF_ERROR(cuda::CopyToDevice(positions, host_positions_.data(), un * sizeof(int64_t), stream_));
  RETURN_IF_ERROR(cuda::CopyToDevice(token_segment, host_segment_.data(), un * sizeof(int32_t), stream_));
  RETURN_IF_ERROR(cuda::CopyToDevice(token_pos, host_pos_.data(), un * sizeof(int32_t), stream_));
  RETURN_IF_ERROR(
      cuda::CopyToDevice(tables, host_tables_.data(), host_tables_.size() * sizeof(int32_t), stream_));

  RETURN_IF_ERROR(cuda::Embed(embed_tokens_, config_.vocab_size, hidden, ids, n, x, stream_));
  for (int64_t layer = 0; layer < config_.num_hidden_layers; ++layer) {
    const Layer& d = layers_[static_cast<size_t>(layer)];
    RETURN_IF_ERROR(cuda::RmsNorm(x, hidden, n, hidden, d.input_layernorm, eps, h, hidden, stream_));
    RETURN_IF_ERROR(blas_->Linear(h, hidden, n, d.q_proj, q, q_width, stream_));
    RETURN_IF_ERROR(blas_->Linear(h, hidden, n, d.k_proj, k, kv_width, stream_));
    RETURN_IF_ERROR(blas_->Linear(h, hidden, n, d.v_proj, v, kv_width, stream_));
    RETURN_IF_ERROR(cuda::HeadRmsNorm(q, q_width, n, num_heads, head_dim, d.q_norm, eps, stream_));
    RETURN_IF_ERROR(cuda::HeadRmsNorm(k, kv_width, n, num_kv_heads, head_dim, d.k_norm, eps, stream_));
    RETURN_IF_ERROR(cuda::ApplyRope(q, q_width, n, num_heads, positions, rope_, stream_));
    RETURN_IF_ERROR(cuda::ApplyRope(k, kv_width, n, num_kv_heads, positions, rope_, stream_));
    // Every segment's keys and values first, then the whole step's attention in one launch.
    int64_t offset = 0;
    for (size_t i = 0; i < segments.size(); ++i) {
      const BatchSegment& s = segments[i];
      RETURN_IF_ERROR(cuda::WriteKv(k + offset * kv_width, kv_width, v + offset * kv_width, kv_width,
                                    s.num_tokens, s.start_pos,
                                    tables + static_cast<int64_t>(i) * table_stride, d.kv, stream_));
      offset += s.num_tokens;
    }
    RETURN_IF_ERROR(cuda::PagedAttentionBatch(q, q_width, n, num_heads, scale, token_segment, token_pos,
                                              max_len, tables, table_stride, d.kv, attn, q_width, stream_));
    RETURN_IF_ERROR(blas_->Linear(attn, q_width, n, d.o_proj, branch, hidden, stream_));
    RETURN_IF_ERROR(cuda::Add(x, branch, n * hidden, x, stream_));
    RETURN_IF_ERROR(cuda::RmsNorm(x, hidden, n, hidden, d.post_attention_layernorm, eps, h, hidden, stream_));
    RETURN_IF_ERROR(Mlp(step, layer, n));
    RETURN_IF_ERROR(cuda::Add(x, branch, n * hidden, x, stream_));
  }

  // Final norm and lm_head for the rows that need logits, in segment order.
  logits->clear();
  int64_t rows = 0;
  for (const BatchSegment& s : segments) rows += s.want_logits ? 1 : 0;
  if (rows == 0) return cuda::Synchronize(stream_);
  const int64_t vocab = lm_head_.out_features;
  ASSIGN_OR_RETURN(bf16 * last, Ensure<bf16>(&last_, static_cast<size_t>(rows * hidden), "last positions"));
  ASSIGN_OR_RETURN(bf16 * out, Ensure<bf16>(&logits_, static_cast<size_t>(rows * vocab), "logits"));
  int64_t offset = 0, row = 0;
  for (const BatchSegment& s : segments) {
    offset += s.num_tokens;
    if (!s.want_logits) continue;
    RETURN_IF_ERROR(cuda::CopyDeviceToDevice(last + row * hidden, x + (offset - 1) * hidden,
                                             static_cast<size_t>(hidden) * sizeof(bf16), stream_));
    ++row;
  }
  RETURN_IF_ERROR(cuda::RmsNorm(last, hidden, rows, hidden, final_norm_, eps, last, hidden, stream_));
  RETURN_IF_ERROR(blas_->Linear(last, hidden, rows, lm_head_, out, vocab, stream_));
  host_logits_.resize(static_cast<size_t>(rows * vocab));
  RETURN_IF_ERROR(cuda::CopyToHost(host_logits_.data(), out, host_logits_.size() * sizeof(bf16), stream_));
  RETURN_IF_ERROR(cuda::Synchronize(stream_));
  logits->resize(host_logits_.size());
  for (size_t i = 0; i < host_logits_.size(); ++i) (*logits)[i] = BF16ToFloat(host_logits_[i]);
  return absl::OkStatus();
}

}  // namespace moe::engine
