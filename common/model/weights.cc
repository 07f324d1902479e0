#include "common/model/weights.h"

#include <algorithm>
#include <cassert>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/model/load_progress.h"
#include "common/status/status_macros.h"
#include "common/tensor/bf16.h"

namespace moe::model {
namespace {

using Owned = std::vector<std::unique_ptr<uint8_t[]>>;

// A run of `count` elements starting `offset` elements into a checkpoint tensor.
struct Part {
  std::string name;
  TensorView view;
  int64_t offset = 0;
};

int64_t CeilDiv(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

bool Aligned(const void* p, size_t alignment) {
  return reinterpret_cast<uintptr_t>(p) % alignment == 0;
}

const uint8_t* ElementPtr(const Part& p) {
  return static_cast<const uint8_t*>(p.view.data) + p.offset * static_cast<int64_t>(DTypeSize(p.view.dtype));
}

float LoadAsFloat(DType dtype, const uint8_t* src, int64_t i) {
  switch (dtype) {
    case DType::kF32: {
      float f;
      std::memcpy(&f, src + 4 * i, 4);
      return f;
    }
    case DType::kF16: {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      return HalfToFloat(h);
    }
    case DType::kBF16: {
      bf16 b;
      std::memcpy(&b, src + 2 * i, 2);
      return BF16ToFloat(b);
    }
    default:
      return 0.0f;  // unreachable: callers accept only the three dtypes above
  }
}

bool IsFloatDType(DType d) {
  return d == DType::kF32 || d == DType::kF16 || d == DType::kBF16;
}

// `count` bf16 values: a view when the checkpoint holds aligned BF16, else an owned conversion.
absl::StatusOr<const bf16*> Bf16Data(const Part& p, int64_t count, Owned* owned) {
  if (!IsFloatDType(p.view.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", p.name, "' has dtype ",
                                                   std::string(DTypeName(p.view.dtype)),
                                                   ", expected BF16 (or F32/F16, converted to BF16)"));
  }
  const uint8_t* src = ElementPtr(p);
  if (p.view.dtype == DType::kBF16 && Aligned(src, alignof(bf16))) return reinterpret_cast<const bf16*>(src);
  auto buffer = std::make_unique<uint8_t[]>(static_cast<size_t>(count) * sizeof(bf16));
  auto* dst = reinterpret_cast<bf16*>(buffer.get());
  for (int64_t i = 0; i < count; ++i) dst[i] = FloatToBF16(LoadAsFloat(p.view.dtype, src, i));
  // The worker reads only the converted copy: the source's pages leave the page tables (they stay in
  // the page cache; the mapping is read-only and private), so the tensor is resident once.
  ReleasePagesInside(src, count * static_cast<int64_t>(DTypeSize(p.view.dtype)));
  owned->push_back(std::move(buffer));
  return dst;
}

// `count` float32 values (FP8 scales): a view of aligned F32, else an owned conversion.
absl::StatusOr<const float*> F32Data(const Part& p, int64_t count, Owned* owned) {
  if (!IsFloatDType(p.view.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", p.name, "' has dtype ", std::string(DTypeName(p.view.dtype)), ", expected F32 or BF16"));
  }
  const uint8_t* src = ElementPtr(p);
  if (p.view.dtype == DType::kF32 && Aligned(src, alignof(float))) return reinterpret_cast<const float*>(src);
  auto buffer = std::make_unique<uint8_t[]>(static_cast<size_t>(count) * sizeof(float));
  auto* dst = reinterpret_cast<float*>(buffer.get());
  for (int64_t i = 0; i < count; ++i) dst[i] = LoadAsFloat(p.view.dtype, src, i);
  ReleasePagesInside(src, count * static_cast<int64_t>(DTypeSize(p.view.dtype)));
  owned->push_back(std::move(buffer));
  return dst;
}

absl::Status CheckShape(const std::string& name, const TensorView& v, const std::vector<int64_t>& expected) {
  if (v.shape != expected) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has shape ", ShapeString(v.shape),
                                                   ", expected ", ShapeString(expected)));
  }
  return absl::OkStatus();
}

// A linear weight [out, in] from `w`; FP8 weights take their scales [ceil(out/128), ceil(in/128)]
// from `scale` (already shape-checked by the caller).
absl::StatusOr<LinearWeight> MakeLinear(const Part& w, const Part* scale, int64_t out, int64_t in,
                                        Owned* owned) {
  LinearWeight lw;
  lw.out_features = out;
  lw.in_features = in;
  if (w.view.dtype == DType::kF8E4M3) {
    lw.dtype = DType::kF8E4M3;
    lw.data = ElementPtr(w);
    ASSIGN_OR_RETURN(lw.scale_inv,
                     F32Data(*scale, CeilDiv(out, kFp8BlockSize) * CeilDiv(in, kFp8BlockSize), owned));
    return lw;
  }
  lw.dtype = DType::kBF16;
  ASSIGN_OR_RETURN(const bf16* data, Bf16Data(w, out * in, owned));
  lw.data = data;
  return lw;
}

// modules_to_not_convert entries match whole dotted components ("lm_head", "model.layers.0.mlp.gate").
bool NotConverted(const ModelConfig& config, const std::string& module) {
  if (!config.quantization.has_value()) return true;
  for (const std::string& m : config.quantization->modules_to_not_convert) {
    if (module == m || absl::EndsWith(module, absl::StrCat(".", m)) ||
        absl::StartsWith(module, absl::StrCat(m, ".")) ||
        absl::StrContains(module, absl::StrCat(".", m, "."))) {
      return true;
    }
  }
  return false;
}

class Resolver {
 public:
  Resolver(const Checkpoint& checkpoint, const ModelConfig& config, Owned* owned)
      : checkpoint_(checkpoint), config_(config), owned_(owned) {}

  absl::StatusOr<Part> Get(const std::string& name, const std::vector<int64_t>& shape) {
    ASSIGN_OR_RETURN(TensorView v, checkpoint_.Get(name));
    RETURN_IF_ERROR(CheckShape(name, v, shape));
    return Part{name, std::move(v), 0};
  }

  absl::StatusOr<const bf16*> Vector(const std::string& name, int64_t n) {
    ASSIGN_OR_RETURN(Part p, Get(name, {n}));
    return Bf16Data(p, n, owned_);
  }

  absl::StatusOr<const bf16*> Matrix(const std::string& name, int64_t rows, int64_t cols) {
    ASSIGN_OR_RETURN(Part p, Get(name, {rows, cols}));
    return Bf16Data(p, rows * cols, owned_);
  }

  // `<module>.weight` [out, in], plus `<module>.weight_scale_inv` when the weight is F8_E4M3.
  absl::StatusOr<LinearWeight> Linear(const std::string& module, int64_t out, int64_t in) {
    ASSIGN_OR_RETURN(Part w, Get(module + ".weight", {out, in}));
    if (w.view.dtype != DType::kF8E4M3) return MakeLinear(w, nullptr, out, in, owned_);
    RETURN_IF_ERROR(CheckFp8Allowed(w.name, module));
    ASSIGN_OR_RETURN(Part scale, Get(module + ".weight_scale_inv",
                                     {CeilDiv(out, kFp8BlockSize), CeilDiv(in, kFp8BlockSize)}));
    return MakeLinear(w, &scale, out, in, owned_);
  }

  absl::Status CheckFp8Allowed(const std::string& tensor, const std::string& module) {
    if (!config_.IsFp8()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", tensor, "' is F8_E4M3 but config.json has no fp8 quantization_config"));
    }
    if (NotConverted(config_, module)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", tensor, "' is F8_E4M3 but its module is in modules_to_not_convert"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<MlpWeights> Mlp(const std::string& prefix, int64_t inter) {
    const int64_t h = config_.hidden_size;
    MlpWeights m;
    ASSIGN_OR_RETURN(m.gate_proj, Linear(prefix + ".gate_proj", inter, h));
    ASSIGN_OR_RETURN(m.up_proj, Linear(prefix + ".up_proj", inter, h));
    ASSIGN_OR_RETURN(m.down_proj, Linear(prefix + ".down_proj", h, inter));
    return m;
  }

  const Checkpoint& checkpoint() const { return checkpoint_; }
  const ModelConfig& config() const { return config_; }
  Owned* owned() { return owned_; }

 private:
  const Checkpoint& checkpoint_;
  const ModelConfig& config_;
  Owned* owned_;
};

std::string LayerPrefix(int64_t layer) {
  return absl::StrCat("model.layers.", layer);
}

// The v5 fused experts of one layer: gate_up_proj [E, 2I, H] (rows [0, I) gate, [I, 2I) up) and
// down_proj [E, H, I], with `<name>_scale_inv` (or `_scales_inv`) when FP8.
absl::StatusOr<std::vector<MlpWeights>> FusedExperts(Resolver& r, int64_t layer, int64_t first,
                                                     int64_t count) {
  const ModelConfig& c = r.config();
  const int64_t e_total = c.num_experts, h = c.hidden_size, inter = c.moe_intermediate_size;
  const std::string base = LayerPrefix(layer) + ".mlp.experts.";
  ASSIGN_OR_RETURN(Part gate_up, r.Get(base + "gate_up_proj", {e_total, 2 * inter, h}));
  ASSIGN_OR_RETURN(Part down, r.Get(base + "down_proj", {e_total, h, inter}));
  if (gate_up.view.dtype != down.view.dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensors '", gate_up.name, "' and '", down.name, "' have different dtypes"));
  }
  const bool fp8 = gate_up.view.dtype == DType::kF8E4M3;
  Part gate_up_scale, down_scale;
  if (fp8) {
    RETURN_IF_ERROR(r.CheckFp8Allowed(gate_up.name, base + "gate_up_proj"));
    if (inter % kFp8BlockSize != 0) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", gate_up.name, "': fused FP8 experts need ",
                                                     "moe_intermediate_size to be a multiple of 128"));
    }
    auto scale_name = [&](const std::string& n) {
      return r.checkpoint().Contains(n + "_scales_inv") ? n + "_scales_inv" : n + "_scale_inv";
    };
    ASSIGN_OR_RETURN(gate_up_scale, r.Get(scale_name(gate_up.name),
                                          {e_total, 2 * inter / kFp8BlockSize, CeilDiv(h, kFp8BlockSize)}));
    ASSIGN_OR_RETURN(down_scale, r.Get(scale_name(down.name),
                                       {e_total, CeilDiv(h, kFp8BlockSize), inter / kFp8BlockSize}));
  }
  const int64_t gu_scale_per_expert = 2 * inter / kFp8BlockSize * CeilDiv(h, kFp8BlockSize);
  const int64_t gate_scale_rows = inter / kFp8BlockSize * CeilDiv(h, kFp8BlockSize);
  const int64_t down_scale_per_expert = CeilDiv(h, kFp8BlockSize) * (inter / kFp8BlockSize);
  std::vector<MlpWeights> out;
  for (int64_t e = first; e < first + count; ++e) {
    Part g = gate_up, u = gate_up, d = down;
    g.offset = e * 2 * inter * h;
    u.offset = g.offset + inter * h;
    d.offset = e * h * inter;
    Part gs = gate_up_scale, us = gate_up_scale, ds = down_scale;
    gs.offset = e * gu_scale_per_expert;
    us.offset = gs.offset + gate_scale_rows;
    ds.offset = e * down_scale_per_expert;
    MlpWeights m;
    ASSIGN_OR_RETURN(m.gate_proj, MakeLinear(g, fp8 ? &gs : nullptr, inter, h, r.owned()));
    ASSIGN_OR_RETURN(m.up_proj, MakeLinear(u, fp8 ? &us : nullptr, inter, h, r.owned()));
    ASSIGN_OR_RETURN(m.down_proj, MakeLinear(d, fp8 ? &ds : nullptr, h, inter, r.owned()));
    out.push_back(m);
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<DenseWeights>> LoadDenseWeights(const Checkpoint& checkpoint,
                                                               const ModelConfig& config) {
  auto w = std::make_unique<DenseWeights>();
  Resolver r(checkpoint, config, &w->owned);
  const int64_t h = config.hidden_size, d = config.head_dim, v = config.vocab_size;
  const int64_t q_out = config.num_attention_heads * d, kv_out = config.num_key_value_heads * d;
  ASSIGN_OR_RETURN(w->embed_tokens, r.Matrix("model.embed_tokens.weight", v, h));
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string p = LayerPrefix(l);
    AttentionLayerWeights layer;
    ASSIGN_OR_RETURN(layer.input_layernorm, r.Vector(p + ".input_layernorm.weight", h));
    ASSIGN_OR_RETURN(layer.q_proj, r.Linear(p + ".self_attn.q_proj", q_out, h));
    ASSIGN_OR_RETURN(layer.k_proj, r.Linear(p + ".self_attn.k_proj", kv_out, h));
    ASSIGN_OR_RETURN(layer.v_proj, r.Linear(p + ".self_attn.v_proj", kv_out, h));
    ASSIGN_OR_RETURN(layer.o_proj, r.Linear(p + ".self_attn.o_proj", h, q_out));
    ASSIGN_OR_RETURN(layer.q_norm, r.Vector(p + ".self_attn.q_norm.weight", d));
    ASSIGN_OR_RETURN(layer.k_norm, r.Vector(p + ".self_attn.k_norm.weight", d));
    ASSIGN_OR_RETURN(layer.post_attention_layernorm, r.Vector(p + ".post_attention_layernorm.weight", h));
    if (config.IsMoeLayer(l)) {
      ASSIGN_OR_RETURN(layer.router, r.Matrix(p + ".mlp.gate.weight", config.num_experts, h));
    } else {
      ASSIGN_OR_RETURN(layer.dense_mlp, r.Mlp(p + ".mlp", config.intermediate_size));
    }
    w->layers.push_back(std::move(layer));
    ReportLoadProgress("resolving dense weights", l + 1, config.num_hidden_layers);
  }
  ASSIGN_OR_RETURN(w->final_norm, r.Vector("model.norm.weight", h));
  w->lm_head.dtype = DType::kBF16;
  w->lm_head.out_features = v;
  w->lm_head.in_features = h;
  if (config.tie_word_embeddings) {
    w->lm_head.data = w->embed_tokens;  // transformers ignores a stored lm_head.weight when tied
  } else {
    ASSIGN_OR_RETURN(const bf16* lm_head, r.Matrix("lm_head.weight", v, h));
    w->lm_head.data = lm_head;
  }
  return w;
}

absl::StatusOr<std::unique_ptr<ExpertShardWeights>> LoadExpertShard(const Checkpoint& checkpoint,
                                                                    const ModelConfig& config,
                                                                    int64_t first_expert,
                                                                    int64_t num_experts) {
  if (!config.IsMoe()) {
    return absl::InvalidArgumentError(absl::StrCat("model_type ", config.model_type, " has no experts"));
  }
  if (first_expert < 0 || num_experts <= 0 || first_expert + num_experts > config.num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("expert shard [", first_expert, ", ",
                                                   first_expert + num_experts, ") is not inside [0, ",
                                                   config.num_experts, ")"));
  }
  auto w = std::make_unique<ExpertShardWeights>();
  w->first_expert = first_expert;
  w->num_experts = num_experts;
  Resolver r(checkpoint, config, &w->owned);
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    std::vector<MlpWeights> experts;
    if (config.IsMoeLayer(l)) {
      const std::string base = LayerPrefix(l) + ".mlp.experts.";
      if (checkpoint.Contains(base + "gate_up_proj")) {
        ASSIGN_OR_RETURN(experts, FusedExperts(r, l, first_expert, num_experts));
      } else {
        for (int64_t e = first_expert; e < first_expert + num_experts; ++e) {
          ASSIGN_OR_RETURN(MlpWeights m, r.Mlp(absl::StrCat(base, e), config.moe_intermediate_size));
          experts.push_back(m);
        }
      }
    }
    w->layers.push_back(std::move(experts));
    ReportLoadProgress(absl::StrCat("resolving experts ", first_expert, "-", first_expert + num_experts - 1),
                       l + 1, config.num_hidden_layers);
  }
  return w;
}

namespace {

void AddRanges(const LinearWeight& w, std::vector<MemoryRange>* ranges) {
  if (w.data == nullptr) return;
  ranges->push_back({w.data, w.out_features * w.in_features * static_cast<int64_t>(DTypeSize(w.dtype))});
  if (w.scale_inv != nullptr) ranges->push_back({w.scale_inv, w.ScaleRows() * w.ScaleCols() * 4});
}

void AddRanges(const MlpWeights& w, std::vector<MemoryRange>* ranges) {
  AddRanges(w.gate_proj, ranges);
  AddRanges(w.up_proj, ranges);
  AddRanges(w.down_proj, ranges);
}

void MarkReleasable(const Owned& owned, std::vector<MemoryRange>* ranges) {
  for (MemoryRange& r : *ranges) {
    r.release_after_copy = std::none_of(
        owned.begin(), owned.end(), [&r](const std::unique_ptr<uint8_t[]>& o) { return o.get() == r.data; });
  }
}

}  // namespace

WarmUpOptions WeightsWarmUpOptions() {
  WarmUpOptions options;
  options.memory = WeightsMemoryFromEnv();
  return options;
}

namespace {

// Every linear weight's bytes (codes and scales), and the embedding unless the head aliases it.
// A range outside the owned conversions may have its pages released once copied; an owned
// conversion is heap memory whose edge pages other objects share, and is freed with the weights.
std::vector<MemoryRange> WeightRanges(const DenseWeights& weights) {
  std::vector<MemoryRange> ranges;
  AddRanges(weights.lm_head, &ranges);
  if (weights.embed_tokens != weights.lm_head.data) {
    ranges.push_back({weights.embed_tokens, weights.lm_head.out_features * weights.lm_head.in_features * 2});
  }
  for (const AttentionLayerWeights& layer : weights.layers) {
    for (const LinearWeight* w : {&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.o_proj}) {
      AddRanges(*w, &ranges);
    }
    AddRanges(layer.dense_mlp, &ranges);
  }
  MarkReleasable(weights.owned, &ranges);
  return ranges;
}

std::vector<MemoryRange> WeightRanges(const ExpertShardWeights& weights) {
  std::vector<MemoryRange> ranges;
  for (const std::vector<MlpWeights>& layer : weights.layers) {
    for (const MlpWeights& expert : layer) AddRanges(expert, &ranges);
  }
  MarkReleasable(weights.owned, &ranges);
  return ranges;
}

void RelocateLinear(const ResidentCopy& copy, LinearWeight* w) {
  w->data = copy.Relocate(w->data);
  if (w->scale_inv != nullptr) w->scale_inv = copy.Relocate(w->scale_inv);
}

void RelocateMlp(const ResidentCopy& copy, MlpWeights* m) {
  RelocateLinear(copy, &m->gate_proj);
  RelocateLinear(copy, &m->up_proj);
  RelocateLinear(copy, &m->down_proj);
}

// Points every view WeightRanges covers at `copy`, which then stays alive with the weights.
void Relocate(std::shared_ptr<const ResidentCopy> copy, DenseWeights& weights) {
  weights.embed_tokens = copy->Relocate(weights.embed_tokens);
  RelocateLinear(*copy, &weights.lm_head);
  for (AttentionLayerWeights& layer : weights.layers) {
    for (LinearWeight* w : {&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.o_proj})
      RelocateLinear(*copy, w);
    if (layer.dense_mlp.gate_proj.data != nullptr) RelocateMlp(*copy, &layer.dense_mlp);
  }
  weights.resident = std::move(copy);
}

void Relocate(std::shared_ptr<const ResidentCopy> copy, ExpertShardWeights& weights) {
  for (std::vector<MlpWeights>& layer : weights.layers) {
    for (MlpWeights& expert : layer) RelocateMlp(*copy, &expert);
  }
  weights.resident = std::move(copy);
}

void ReleaseRanges(const std::vector<MemoryRange>& ranges) {
  for (const MemoryRange& r : ranges) {
    if (r.release_after_copy) ReleasePagesInside(r.data, r.bytes);
  }
}

// The warm-up of `weights`; with a huge-page copy (made now), the checkpoint pages each chunk came
// from leave this process's page tables once copied (they stay in the page cache), so resident
// memory is the weights once, and then the views point at the copy.
template <typename Weights>
WarmUpResult WarmUpWeights(std::string_view stage, Weights& weights, const WarmUpOptions& options) {
  WarmUpResult result = WarmUp(stage, WeightRanges(weights), options);
  if (result.copy != nullptr) Relocate(result.copy, weights);
  return result;
}

std::string ShardStage(const ExpertShardWeights& weights) {
  return absl::StrCat("experts ", weights.first_expert, "-", weights.first_expert + weights.num_experts - 1);
}

}  // namespace

WarmUpResult PrefaultWeights(DenseWeights& weights, const WarmUpOptions& options) {
  return WarmUpWeights("reading dense weights", weights, options);
}

WarmUpResult PrefaultWeights(ExpertShardWeights& weights, const WarmUpOptions& options) {
  return WarmUpWeights("reading " + ShardStage(weights), weights, options);
}

// HugePageSwitch

HugePageSwitch::HugePageSwitch(std::string stage, std::vector<MemoryRange> ranges, OnReady on_ready)
    : ranges_(std::move(ranges)) {
  // One thread, so serving keeps the cores; the pages are in the page tables already, so the work
  // is the copy (and the kernel zeroing the arena's huge pages).
  thread_ = std::thread([this, stage = std::move(stage), on_ready = std::move(on_ready)] {
    WarmUpOptions options;
    options.num_threads = 1;
    options.chunk_bytes = int64_t{16} << 20;  // how long a stop may wait: one chunk
    options.memory = WeightsMemory::kHugePages;
    options.stop = &stop_;
    // The views still point at the source while the worker serves: nothing is released per chunk.
    std::vector<MemoryRange> ranges = ranges_;
    for (MemoryRange& r : ranges) r.release_after_copy = false;
    WarmUpResult result = WarmUp(stage, std::move(ranges), options);
    if (result.copy == nullptr) return;
    copy_ = std::move(result.copy);
    ready_.store(true, std::memory_order_release);
    if (on_ready) on_ready(*this);
  });
}

std::unique_ptr<HugePageSwitch> HugePageSwitch::Start(const DenseWeights& weights, OnReady on_ready) {
  return std::unique_ptr<HugePageSwitch>(new HugePageSwitch("copying dense weights into huge pages",
                                                            WeightRanges(weights), std::move(on_ready)));
}

std::unique_ptr<HugePageSwitch> HugePageSwitch::Start(const ExpertShardWeights& weights, OnReady on_ready) {
  return std::unique_ptr<HugePageSwitch>(new HugePageSwitch(
      "copying " + ShardStage(weights) + " into huge pages", WeightRanges(weights), std::move(on_ready)));
}

HugePageSwitch::~HugePageSwitch() {
  stop_.store(true, std::memory_order_relaxed);
  Wait();
}

void HugePageSwitch::Wait() {
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void HugePageSwitch::Apply(DenseWeights& weights) {
  assert(ready());
  Relocate(copy_, weights);
  ReleaseSource();
}

std::shared_ptr<const ExpertShardWeights> HugePageSwitch::Relocated(
    std::shared_ptr<const ExpertShardWeights> weights) const {
  assert(ready());
  // The copy's views: owned conversions were copied too, so nothing points into `weights` any
  // more; it is kept alive with the copy all the same, for whatever it owns.
  struct Holder {
    ExpertShardWeights copy;
    std::shared_ptr<const ExpertShardWeights> source;
  };
  auto holder = std::make_shared<Holder>();
  holder->copy.first_expert = weights->first_expert;
  holder->copy.num_experts = weights->num_experts;
  holder->copy.layers = weights->layers;
  Relocate(copy_, holder->copy);
  holder->source = std::move(weights);
  return std::shared_ptr<const ExpertShardWeights>(holder, &holder->copy);
}

void HugePageSwitch::ReleaseSource() const {
  ReleaseRanges(ranges_);
}

}  // namespace moe::model
