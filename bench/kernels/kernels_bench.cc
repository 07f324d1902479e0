// kernels_bench: memory bandwidth and Linear throughput on Qwen3-30B-A3B shapes, with each
// Linear's effective weight bandwidth as a ratio of the read bandwidth measured in the same run
// (docs/contributing.md#benchmarks: ratios, not absolute numbers, since the machines are noisy).
//
// Weights are cycled over enough copies (>= --pool-bytes in total) that every call streams them
// from memory rather than from a cache.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "bench/util/memory_bandwidth.h"
#include "common/kernels/cpu/kernels.h"
#include "common/kernels/cpu/thread_pool.h"
#include "common/tensor/bf16.h"
#include "common/tensor/linear_weight.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
// GCC 12's AVX-512 headers trip -Wuninitialized on their own reduce/extract helpers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace moe::kernels::cpu {
namespace {

using ::moe::bench::Bandwidth;
using ::moe::bench::Buffer;
using ::moe::bench::MeasureBandwidth;
using ::moe::bench::PerThreadChunks;

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

uint64_t NextRandom(uint64_t& s) {
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}

// Fills weights with valid random values: bf16 of small magnitude, or e4m3 codes without NaN.
void FillWeights(uint8_t* p, size_t bytes, bool fp8, uint64_t seed) {
  PerThreadChunks(bytes, [&](size_t b, size_t e) {
    uint64_t s = seed ^ (b * 0x9E3779B97F4A7C15ull) ^ 0x1234567ull;
    if (fp8) {
      for (size_t i = b; i < e; ++i) p[i] = static_cast<uint8_t>(NextRandom(s) & 0x76);
    } else {
      for (size_t i = b; i + 1 < e; i += 2) {
        const uint16_t v = static_cast<uint16_t>(0x3c00 | (NextRandom(s) & 0x80ff));  // |v| ~ 2^-7
        std::memcpy(p + i, &v, 2);
      }
    }
  });
}

struct Shape {
  const char* name;
  int64_t out_features, in_features;
};

void BenchLinear(const Shape& shape, bool fp8, const std::vector<int64_t>& rows_list, size_t pool_bytes,
                 double min_seconds, double read_gbs) {
  LinearWeight proto{fp8 ? DType::kF8E4M3 : DType::kBF16, shape.out_features, shape.in_features, nullptr,
                     nullptr};
  const size_t data_bytes = shape.out_features * shape.in_features * (fp8 ? 1 : 2);
  const size_t copies = std::max<size_t>(1, (pool_bytes + data_bytes - 1) / data_bytes);
  std::vector<std::unique_ptr<Buffer>> data;
  std::vector<std::vector<float>> scales;
  std::vector<LinearWeight> weights;
  for (size_t c = 0; c < copies; ++c) {
    data.push_back(std::make_unique<Buffer>(data_bytes));
    FillWeights(data.back()->data, data_bytes, fp8, c + 1);
    LinearWeight w = proto;
    w.data = data.back()->data;
    if (fp8) {
      scales.emplace_back(proto.ScaleRows() * proto.ScaleCols(), 1e-3f);
      w.scale_inv = scales.back().data();
    }
    weights.push_back(w);
  }
  const int64_t max_rows = *std::max_element(rows_list.begin(), rows_list.end());
  std::vector<bf16> x(max_rows * shape.in_features);
  uint64_t s = 42;
  for (bf16& v : x)
    v = FloatToBF16(static_cast<float>(static_cast<int64_t>(NextRandom(s) % 2001) - 1000) / 1000.0f);
  std::vector<bf16> y(max_rows * shape.out_features);
  for (int64_t rows : rows_list) {
    Linear(x.data(), rows, weights[0], y.data());  // warm up (scratch, threads)
    size_t calls = 0, next = 1 % copies;
    const auto t0 = Clock::now();
    double elapsed = 0;
    while (elapsed < min_seconds || calls < copies) {
      Linear(x.data(), rows, weights[next], y.data());
      next = (next + 1) % copies;
      ++calls;
      elapsed = Seconds(t0, Clock::now());
    }
    const double per_call = elapsed / calls;
    const double weight_gbs = proto.WeightBytes() / per_call / 1e9;
    const double gflops = 2.0 * rows * shape.out_features * shape.in_features / per_call / 1e9;
    std::printf("%-8s %-14s %5s %5lld %10.1f %9.1f %7.2f %9.1f\n", shape.name,
                (std::to_string(shape.out_features) + "x" + std::to_string(shape.in_features)).c_str(),
                fp8 ? "fp8" : "bf16", static_cast<long long>(rows), per_call * 1e6, weight_gbs,
                weight_gbs / read_gbs, gflops);
    std::fflush(stdout);
  }
}

}  // namespace
}  // namespace moe::kernels::cpu

int main(int argc, char** argv) {
  using namespace moe::kernels::cpu;
  CLI::App app{"CPU kernel benchmarks: memory bandwidth and Linear on Qwen3-30B-A3B shapes"};
  double buffer_mib = 1024, pool_mib = 1024, min_seconds = 0.3;
  bool skip_prefill = false;
  std::vector<std::string> layers;
  std::string dtype = "all";
  app.add_option("--buffer-mib", buffer_mib, "Size of each bandwidth test buffer (MiB)");
  app.add_option("--pool-mib", pool_mib, "Total bytes of weight copies cycled per shape (MiB)");
  app.add_option("--min-seconds", min_seconds, "Minimum timed seconds per measurement");
  app.add_flag("--skip-prefill", skip_prefill, "Skip the 512-row measurements");
  app.add_option("--layers", layers, "Only these layers (expert, down, q_proj, lm_head)");
  app.add_option("--dtype", dtype, "Only this weight dtype: bf16, fp8 or all")
      ->check(CLI::IsMember({"bf16", "fp8", "all"}));
  CLI11_PARSE(app, argc, argv);

  std::printf("isa=%s threads=%d\n", KernelIsa(), ThreadPool::Global().num_threads());
  const Bandwidth bw = MeasureBandwidth(static_cast<size_t>(buffer_mib * 1048576), 5);
  std::printf("copy bandwidth (read+write): %.1f GB/s\nread bandwidth (streaming sum): %.1f GB/s\n\n",
              bw.copy_gbs, bw.read_gbs);
  std::printf("%-8s %-14s %5s %5s %10s %9s %7s %9s\n", "layer", "N x K", "dtype", "rows", "us/call",
              "weightGB/s", "ratio", "GFLOP/s");
  const Shape shapes[] = {
      {"expert", 768, 2048}, {"down", 2048, 768}, {"q_proj", 4096, 2048}, {"lm_head", 151936, 2048}};
  for (const Shape& shape : shapes) {
    if (!layers.empty() && std::find(layers.begin(), layers.end(), shape.name) == layers.end()) continue;
    for (bool fp8 : {false, true}) {
      if (dtype != "all" && (dtype == "fp8") != fp8) continue;
      std::vector<int64_t> rows = {1, 8, 32};
      // 512 rows of lm_head never happen (only the last position needs logits).
      if (!skip_prefill && shape.out_features < 100000) rows.push_back(512);
      BenchLinear(shape, fp8, rows, static_cast<size_t>(pool_mib * 1048576), min_seconds, bw.read_gbs);
    }
  }
  std::printf("\nratio = effective weight bandwidth / read bandwidth measured above.\n");
  return 0;
}
