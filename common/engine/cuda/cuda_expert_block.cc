#include "common/engine/cuda/cuda_expert_block.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "common/tensor/dtype.h"

namespace moe::engine {
namespace {

namespace cuda = kernels::cuda;

// Offsets inside a layer's allocation are multiples of this (cuBLASLt wants 16-byte aligned
// operands; 256 is what cudaMalloc itself gives).
constexpr size_t kAlign = 256;

size_t AlignUp(size_t n) {
  return (n + kAlign - 1) / kAlign * kAlign;
}

size_t DataBytes(const LinearWeight& w) {
  return static_cast<size_t>(w.out_features * w.in_features) * DTypeSize(w.dtype);
}

size_t ScaleBytes(const LinearWeight& w) {
  if (w.dtype != DType::kF8E4M3) return 0;
  return static_cast<size_t>(cuda::PackedWeightScaleCount(w.out_features, w.in_features)) * sizeof(float);
}

absl::Status CheckWeight(const LinearWeight& w, int64_t layer, int64_t expert, const char* name) {
  if (w.dtype != DType::kBF16 && w.dtype != DType::kF8E4M3) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " expert ", expert, " ", name,
                                                   ": the CUDA experts take BF16 or F8_E4M3 weights"));
  }
  return absl::OkStatus();
}

}  // namespace

CudaExpertBlock::CudaExpertBlock(const model::ModelConfig& config, const model::ExpertShardWeights& weights,
                                 int ordinal)
    : config_(config),
      first_expert_(weights.first_expert),
      num_experts_(weights.num_experts),
      ordinal_(ordinal),
      token_counts_(config.num_hidden_layers, weights.num_experts) {}

absl::StatusOr<std::unique_ptr<CudaExpertBlock>> CudaExpertBlock::Create(
    const model::ModelConfig& config, const model::ExpertShardWeights& weights, int ordinal) {
  RETURN_IF_ERROR(cuda::CheckDevice(ordinal, "--device"));
  RETURN_IF_ERROR(cuda::SetDevice(ordinal));
  std::unique_ptr<CudaExpertBlock> block(new CudaExpertBlock(config, weights, ordinal));
  ASSIGN_OR_RETURN(block->stream_, cuda::CreateStream());
  {
    absl::MutexLock lock(&block->mu_);
    ASSIGN_OR_RETURN(block->blas_, cuda::Blas::Create());
  }
  block->experts_.resize(weights.layers.size());
  for (size_t l = 0; l < weights.layers.size(); ++l) {
    const int64_t layer = static_cast<int64_t>(l);
    block->expert_weight_bytes_.push_back(ShardExpertWeightBytes(weights, layer));
    if (!weights.layers[l].empty()) RETURN_IF_ERROR(block->UploadLayer(layer, weights.layers[l]));
  }
  return block;
}

absl::Status CudaExpertBlock::UploadLayer(int64_t layer, const std::vector<model::MlpWeights>& experts) {
  // One allocation per layer: every expert's gate, up, down (data, then packed scales for FP8).
  size_t total = 0;
  for (size_t e = 0; e < experts.size(); ++e) {
    const int64_t expert = first_expert_ + static_cast<int64_t>(e);
    RETURN_IF_ERROR(CheckWeight(experts[e].gate_proj, layer, expert, "gate_proj"));
    RETURN_IF_ERROR(CheckWeight(experts[e].up_proj, layer, expert, "up_proj"));
    RETURN_IF_ERROR(CheckWeight(experts[e].down_proj, layer, expert, "down_proj"));
    for (const LinearWeight* w : {&experts[e].gate_proj, &experts[e].up_proj, &experts[e].down_proj}) {
      total += AlignUp(DataBytes(*w)) + AlignUp(ScaleBytes(*w));
    }
  }
  ASSIGN_OR_RETURN(void* base,
                   cuda::Malloc(total, absl::StrCat("the experts of layer ", layer, " (", experts.size(),
                                                    " experts from ", first_expert_, ")")));
  allocations_.push_back(base);
  device_weight_bytes_ += static_cast<int64_t>(total);
  auto* bytes = static_cast<std::byte*>(base);
  size_t offset = 0;
  std::vector<float> packed;
  auto upload = [&](const LinearWeight& w, cuda::DeviceLinearWeight* out) -> absl::Status {
    *out = {.dtype = w.dtype, .out_features = w.out_features, .in_features = w.in_features};
    out->data = bytes + offset;
    RETURN_IF_ERROR(cuda::CopyToDevice(bytes + offset, w.data, DataBytes(w), stream_));
    offset += AlignUp(DataBytes(w));
    if (w.dtype == DType::kF8E4M3) {
      packed.assign(static_cast<size_t>(cuda::PackedWeightScaleCount(w.out_features, w.in_features)), 0.0f);
      cuda::PackWeightScales(w.scale_inv, w.out_features, w.in_features, packed.data());
      out->scale = reinterpret_cast<const float*>(bytes + offset);
      RETURN_IF_ERROR(cuda::CopyToDevice(bytes + offset, packed.data(), ScaleBytes(w), stream_));
      // The next pack reuses `packed`: wait for this (pageable, so already synchronous) copy.
      RETURN_IF_ERROR(cuda::Synchronize(stream_));
      offset += AlignUp(ScaleBytes(w));
    }
    return absl::OkStatus();
  };
  std::vector<DeviceExpert>& device = experts_[static_cast<size_t>(layer)];
  device.resize(experts.size());
  for (size_t e = 0; e < experts.size(); ++e) {
    RETURN_IF_ERROR(upload(experts[e].gate_proj, &device[e].gate));
    RETURN_IF_ERROR(upload(experts[e].up_proj, &device[e].up));
    RETURN_IF_ERROR(upload(experts[e].down_proj, &device[e].down));
  }
  return cuda::Synchronize(stream_);
}

CudaExpertBlock::~CudaExpertBlock() {
  // Best effort: a destructor has nobody to report to.
  (void)cuda::SetDevice(ordinal_);
  if (stream_ != nullptr) (void)cuda::Synchronize(stream_);
  absl::MutexLock lock(&mu_);
  blas_.reset();
  for (Scratch* s : {&x_, &gate_, &up_, &y_}) cuda::Free(s->ptr);
  for (void* p : allocations_) cuda::Free(p);
  if (stream_ != nullptr) (void)cuda::DestroyStream(stream_);
}

absl::Status CudaExpertBlock::Reserve(Scratch* scratch, size_t bytes, const char* what) const {
  if (scratch->bytes >= bytes) return absl::OkStatus();
  cuda::Free(scratch->ptr);
  scratch->ptr = nullptr;
  scratch->bytes = 0;
  // Grow by half again so a slowly growing round size does not reallocate every time.
  const size_t grown = AlignUp(bytes + bytes / 2);
  ASSIGN_OR_RETURN(scratch->ptr, cuda::Malloc(grown, what));
  scratch->bytes = grown;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::byte>> CudaExpertBlock::Serve(int64_t layer,
                                                              std::span<const std::byte> dispatch) const {
  ASSIGN_OR_RETURN(DecodedDispatch decoded,
                   DecodeDispatch(config_, first_expert_, num_experts_, layer, dispatch));
  const transport::MoeMessageView& in = decoded.in;
  if (in.total_rows == 0) return std::move(decoded.out);
  const std::vector<DeviceExpert>& experts = experts_[static_cast<size_t>(layer)];
  const int64_t hidden = in.hidden;
  // Each group's intermediate rows at inter_offset[i] (elements) of the gate and up scratch.
  std::vector<int64_t> inter_offset(in.groups.size() + 1, 0);
  for (size_t i = 0; i < in.groups.size(); ++i) {
    const DeviceExpert& w = experts[static_cast<size_t>(in.groups[i].expert - first_expert_)];
    inter_offset[i + 1] = inter_offset[i] + int64_t{in.groups[i].num_rows} * w.gate.out_features;
  }
  const size_t row_bytes = static_cast<size_t>(in.total_rows * hidden) * sizeof(bf16);
  const size_t inter_bytes = static_cast<size_t>(inter_offset.back()) * sizeof(bf16);

  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(cuda::SetDevice(ordinal_));
  RETURN_IF_ERROR(Reserve(&x_, row_bytes, "the expert round's input rows"));
  RETURN_IF_ERROR(Reserve(&y_, row_bytes, "the expert round's output rows"));
  RETURN_IF_ERROR(Reserve(&gate_, inter_bytes, "the expert round's gate activations"));
  RETURN_IF_ERROR(Reserve(&up_, inter_bytes, "the expert round's up activations"));
  auto* x = static_cast<bf16*>(x_.ptr);
  auto* y = static_cast<bf16*>(y_.ptr);
  auto* gate = static_cast<bf16*>(gate_.ptr);
  auto* up = static_cast<bf16*>(up_.ptr);
  RETURN_IF_ERROR(cuda::CopyToDevice(x, in.rows, row_bytes, stream_));

  // Gate then up per group (consecutive FP8 calls on the same rows share one quantization), all
  // groups in one grouped call; SiLU·mul is elementwise, so one launch covers every group; then
  // every down projection in a second grouped call.
  std::vector<cuda::LinearCall> calls;
  calls.reserve(2 * in.groups.size());
  int64_t row = 0;
  for (size_t i = 0; i < in.groups.size(); ++i) {
    const int64_t n = in.groups[i].num_rows;
    if (n > 0) {
      const DeviceExpert& w = experts[static_cast<size_t>(in.groups[i].expert - first_expert_)];
      const int64_t inter = w.gate.out_features;
      calls.push_back({x + row * hidden, hidden, n, &w.gate, gate + inter_offset[i], inter});
      calls.push_back({x + row * hidden, hidden, n, &w.up, up + inter_offset[i], inter});
    }
    row += n;
  }
  RETURN_IF_ERROR(blas_->LinearGrouped(calls, stream_));
  RETURN_IF_ERROR(cuda::SiluMul(gate, up, inter_offset.back(), gate, stream_));
  calls.clear();
  row = 0;
  for (size_t i = 0; i < in.groups.size(); ++i) {
    const int64_t n = in.groups[i].num_rows;
    if (n > 0) {
      const DeviceExpert& w = experts[static_cast<size_t>(in.groups[i].expert - first_expert_)];
      calls.push_back({gate + inter_offset[i], w.down.in_features, n, &w.down, y + row * hidden, hidden});
    }
    row += n;
  }
  RETURN_IF_ERROR(blas_->LinearGrouped(calls, stream_));
  RETURN_IF_ERROR(cuda::CopyToHost(decoded.rows_out, y, row_bytes, stream_));
  RETURN_IF_ERROR(cuda::Synchronize(stream_));
  for (const transport::ExpertGroup& g : in.groups) {
    if (g.num_rows > 0) token_counts_.Add(layer, g.expert - first_expert_, static_cast<uint64_t>(g.num_rows));
  }
  return std::move(decoded.out);
}

int64_t CudaExpertBlock::ExpertWeightBytes(int64_t layer) const {
  if (layer < 0 || layer >= static_cast<int64_t>(expert_weight_bytes_.size())) return 0;
  return expert_weight_bytes_[static_cast<size_t>(layer)];
}

std::vector<std::vector<uint64_t>> CudaExpertBlock::TokenCounts() const {
  return token_counts_.Snapshot();
}

}  // namespace moe::engine
