// GPU kernel benchmark (docs/gpu.md): the rooflines measured in the same run, then the CUDA kernels
// at Qwen3-30B-A3B's shapes, each with its fraction of the roofline. One JSON object per line on
// stdout (scripts/gpu_check.sh keeps them), a readable line on stderr.
//
// Rooflines: HBM bandwidth from a device-to-device copy of 1 GiB, counting read + write bytes
// (2 GiB moved per copy); dense BF16 tensor throughput from an 8192^3 cuBLASLt GEMM (2 M N K
// flops). Times are wall-clock over `iters` launches between two stream synchronizations, so tiny
// kernels include their launch overhead (as a step loop without CUDA graphs would).
#include <chrono>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/kernels/cuda/cuda_kernels.h"
#include "common/tensor/bf16.h"

namespace moe::kernels::cuda {
namespace {

struct Buffer {
  explicit Buffer(size_t bytes, const char* what) {
    absl::StatusOr<void*> p = Malloc(bytes, what);
    if (!p.ok()) {
      std::fprintf(stderr, "gpu_kernels_bench: %s\n", p.status().ToString().c_str());
      std::exit(1);
    }
    ptr = *p;
  }
  ~Buffer() { Free(ptr); }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr);
  }
  void* ptr = nullptr;
};

void Check(const absl::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "gpu_kernels_bench: %s: %s\n", what, s.ToString().c_str());
    std::exit(1);
  }
}

// Fills a device buffer with random bf16 (normal, scale) values.
void FillBf16(void* dst, size_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<bf16> host(n);
  for (bf16& v : host) v = FloatToBF16(dist(rng));
  Check(CopyToDevice(dst, host.data(), n * sizeof(bf16), nullptr), "upload");
}
void FillFp8(void* dst, size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> host(n);
  for (uint8_t& v : host) {
    v = static_cast<uint8_t>(rng());
    if ((v & 0x7f) == 0x7f) v = 0;  // no NaN codes
  }
  Check(CopyToDevice(dst, host.data(), n, nullptr), "upload");
}

// Seconds per call of fn, averaged over iters after one warm-up call.
double Time(int iters, const std::function<absl::Status()>& fn) {
  Check(fn(), "warm-up");
  Check(Synchronize(nullptr), "sync");
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) Check(fn(), "run");
  Check(Synchronize(nullptr), "sync");
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
}

void Report(const std::string& name, double seconds, const std::string& metric, double value, double roofline,
            const std::string& extra = "") {
  std::printf("{\"name\":\"%s\",\"us\":%.2f,\"%s\":%.4g,\"fraction_of_roofline\":%.3f%s}\n", name.c_str(),
              seconds * 1e6, metric.c_str(), value, roofline > 0 ? value / roofline : 0.0, extra.c_str());
  std::fflush(stdout);
  std::fprintf(stderr, "%-40s %10.2f us  %s %.4g  (%.1f%% of roofline)\n", name.c_str(), seconds * 1e6,
               metric.c_str(), value, roofline > 0 ? 100.0 * value / roofline : 0.0);
}

int Main() {
  Check(SetDevice(0), "device");
  absl::StatusOr<std::string> desc = DeviceDescription(0);
  std::printf("{\"device\":\"%s\"}\n", desc.ok() ? desc->c_str() : "unknown");
  auto blas_or = Blas::Create();
  Check(blas_or.status(), "cuBLASLt");
  Blas& blas = **blas_or;

  // ---- Rooflines ----
  const size_t copy_bytes = size_t{1} << 30;
  Buffer src(copy_bytes, "copy source"), dst(copy_bytes, "copy destination");
  const double t_copy = Time(10, [&] { return CopyDeviceToDevice(dst.ptr, src.ptr, copy_bytes, nullptr); });
  const double hbm = 2.0 * copy_bytes / t_copy;  // read + write
  Report("roofline_hbm_copy_1GiB", t_copy, "bytes_per_s", hbm, hbm, ",\"convention\":\"read+write\"");
  double tensor_flops = 0;
  {
    const int64_t n = 8192;
    Buffer a(n * n * 2, "gemm A"), b(n * n * 2, "gemm B"), c(n * n * 2, "gemm C");
    FillBf16(a.ptr, n * n, 1, 1.0f);
    FillBf16(b.ptr, n * n, 2, 0.02f);
    const DeviceLinearWeight w{DType::kBF16, n, n, b.ptr, nullptr};
    const double t = Time(5, [&] { return blas.Linear(a.as<bf16>(), n, n, w, c.as<bf16>(), n, nullptr); });
    tensor_flops = 2.0 * n * n * n / t;
    Report("roofline_bf16_gemm_8192", t, "flops_per_s", tensor_flops, tensor_flops);
  }

  // ---- Linear layers at decode/prefill batch sizes (q_proj of 30B-A3B: 2048 -> 4096) ----
  const int64_t hidden = 2048, qdim = 4096;
  Buffer x(8192 * hidden * 2, "activations"), y(8192 * qdim * 2, "outputs");
  FillBf16(x.ptr, 8192 * hidden, 3, 1.0f);
  Buffer wb(qdim * hidden * 2, "bf16 weight"), wq(qdim * hidden, "fp8 weight");
  FillBf16(wb.ptr, qdim * hidden, 4, 0.02f);
  FillFp8(wq.ptr, qdim * hidden, 5);
  std::vector<float> scales(PackedWeightScaleCount(qdim, hidden), 1e-3f);
  Buffer ws(scales.size() * 4, "fp8 scales");
  Check(CopyToDevice(ws.ptr, scales.data(), scales.size() * 4, nullptr), "upload");
  const DeviceLinearWeight w_bf16{DType::kBF16, qdim, hidden, wb.ptr, nullptr};
  const DeviceLinearWeight w_fp8{DType::kF8E4M3, qdim, hidden, wq.ptr, ws.as<float>()};
  for (const DeviceLinearWeight* w : {&w_bf16, &w_fp8}) {
    const bool fp8 = w->dtype == DType::kF8E4M3;
    const double weight_bytes = static_cast<double>(qdim) * hidden * (fp8 ? 1 : 2);
    for (const int64_t rows : {1, 8, 32, 128, 512, 4096}) {
      const double t =
          Time(20, [&] { return blas.Linear(x.as<bf16>(), hidden, rows, *w, y.as<bf16>(), qdim, nullptr); });
      const std::string name = absl::StrFormat("linear_%s_2048x4096_rows%d", fp8 ? "fp8" : "bf16", rows);
      if (rows <= 128) {
        Report(name, t, "weight_bytes_per_s", weight_bytes / t, hbm);
      } else {
        Report(name, t, "flops_per_s", 2.0 * rows * hidden * qdim / t, tensor_flops);
      }
    }
  }

  // ---- One MoE round at batch 1: 8 experts, gate + up + down each (fp8, 768 wide) ----
  {
    const int64_t inter = 768, experts = 8;
    Buffer we(experts * 3 * inter * hidden, "expert weights");
    FillFp8(we.ptr, experts * 3 * inter * hidden, 6);
    std::vector<float> s(PackedWeightScaleCount(inter, hidden) + PackedWeightScaleCount(hidden, inter),
                         1e-3f);
    Buffer es(s.size() * 4, "expert scales");
    Check(CopyToDevice(es.ptr, s.data(), s.size() * 4, nullptr), "upload");
    std::vector<DeviceLinearWeight> gate_up, down;
    for (int64_t e = 0; e < experts; ++e) {
      const uint8_t* base = we.as<uint8_t>() + e * 3 * inter * hidden;
      gate_up.push_back({DType::kF8E4M3, inter, hidden, base, es.as<float>()});
      gate_up.push_back({DType::kF8E4M3, inter, hidden, base + inter * hidden, es.as<float>()});
      down.push_back({DType::kF8E4M3, hidden, inter, base + 2 * inter * hidden,
                      es.as<float>() + PackedWeightScaleCount(inter, hidden)});
    }
    Buffer h(2 * experts * inter * 2, "expert hidden");
    std::vector<LinearCall> first, second;
    for (int64_t e = 0; e < experts; ++e) {
      first.push_back({x.as<bf16>(), hidden, 1, &gate_up[2 * e], h.as<bf16>() + 2 * e * inter, inter});
      first.push_back(
          {x.as<bf16>(), hidden, 1, &gate_up[2 * e + 1], h.as<bf16>() + (2 * e + 1) * inter, inter});
      second.push_back({h.as<bf16>() + 2 * e * inter, inter, 1, &down[e], y.as<bf16>() + e * hidden, hidden});
    }
    const double t = Time(20, [&]() -> absl::Status {
      absl::Status st = blas.LinearGrouped(first, nullptr);
      if (!st.ok()) return st;
      st = SiluMul(h.as<bf16>(), h.as<bf16>() + inter, inter, h.as<bf16>(), nullptr);
      if (!st.ok()) return st;
      return blas.LinearGrouped(second, nullptr);
    });
    Report("moe_round_fp8_batch1_8experts", t, "weight_bytes_per_s", 3.0 * experts * inter * hidden / t, hbm);
  }

  // ---- Paged attention: 32 query heads, 4 kv heads, D 128, block 16 ----
  {
    const int64_t heads = 32, kv_heads = 4, dim = 128, block = 16, ctx = 4096;
    const int64_t num_blocks = ctx / block;
    Buffer kc(num_blocks * block * kv_heads * dim * 2, "k cache"),
        vc(num_blocks * block * kv_heads * dim * 2, "v cache");
    FillBf16(kc.ptr, num_blocks * block * kv_heads * dim, 7, 1.0f);
    FillBf16(vc.ptr, num_blocks * block * kv_heads * dim, 8, 1.0f);
    std::vector<int32_t> table(num_blocks);
    for (int64_t i = 0; i < num_blocks; ++i) table[i] = static_cast<int32_t>((i * 7) % num_blocks);
    Buffer tb(num_blocks * 4, "block table");
    Check(CopyToDevice(tb.ptr, table.data(), table.size() * 4, nullptr), "upload");
    const DevicePagedKv kv{kc.as<bf16>(), vc.as<bf16>(), num_blocks, block, kv_heads, dim};
    Buffer q(512 * heads * dim * 2, "q"), o(512 * heads * dim * 2, "o");
    FillBf16(q.ptr, 512 * heads * dim, 9, 1.0f);
    const float scale = 0.088388f;
    const double t_dec = Time(20, [&] {
      return PagedAttention(q.as<bf16>(), heads * dim, 1, ctx - 1, heads, scale, tb.as<int32_t>(), num_blocks,
                            kv, o.as<bf16>(), heads * dim, nullptr);
    });
    Report("attention_decode_ctx4096", t_dec, "kv_bytes_per_s", 2.0 * ctx * kv_heads * dim * 2 / t_dec, hbm);
    const double t_pre = Time(3, [&] {
      return PagedAttention(q.as<bf16>(), heads * dim, 512, 0, heads, scale, tb.as<int32_t>(), num_blocks, kv,
                            o.as<bf16>(), heads * dim, nullptr);
    });
    Report("attention_prefill_512", t_pre, "flops_per_s", 4.0 * heads * dim * (512.0 * 513 / 2) / t_pre,
           tensor_flops);
  }
  return 0;
}

}  // namespace
}  // namespace moe::kernels::cuda

int main() {
  return moe::kernels::cuda::Main();
}
