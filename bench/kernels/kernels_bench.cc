// kernels_bench: memory bandwidth, compute peak and Linear throughput on Qwen3-30B-A3B shapes, with
// each Linear's effective weight bandwidth as a ratio of the read bandwidth and its GFLOP/s as a
// fraction of the compute peak, both measured in the same run (docs/contributing.md#benchmarks:
// ratios, not absolute numbers, since the machines are noisy). The peak is a register-blocked
// loop of the widest multiply-add the CPU has: VDPBF16PS (AVX-512 BF16) or fp32 FMA (AVX2).
//
// Weights are cycled over enough copies (>= --pool-bytes in total) that every call streams them
// from memory rather than from a cache. --fp8-kernels times the AVX-512 FP8 kernels (dot: VDPBF16PS,
// fma: fp32 FMA) against each other on the same weights, in interleaved passes; --pool-spin-us does
// the same for thread pools that poll for different times between loops.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "bench/util/memory_bandwidth.h"
#include "common/kernels/cpu/attention_internal.h"
#include "common/kernels/cpu/cpu_features.h"
#include "common/kernels/cpu/kernels.h"
#include "common/kernels/cpu/linear_internal.h"
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

// Peak multiply-add throughput of one thread: kChains independent accumulators (more than the
// FMA latency times the number of FMA pipes), `iterations` rounds. Returns flops (2 per product).
// The accumulators are 12 named variables, each an operand of an empty asm statement: held in an
// array, GCC 12 stored all of them to the stack on every iteration, and on a CPU with one store
// port for 512-bit vectors (AMD Zen 4) the loop then measured the stores, about half the peak.
constexpr int kChains = 12;
#define MOE_PEAK_CHAINS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f,avx512bf16"))) double PeakLoopAvx512Bf16(int64_t iterations) {
#define MOE_PEAK_INIT(i) __m512 acc##i = _mm512_set1_ps(static_cast<float>(i));
  MOE_PEAK_CHAINS(MOE_PEAK_INIT)
#undef MOE_PEAK_INIT
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3400);
  for (int64_t it = 0; it < iterations; ++it) {
#define MOE_PEAK_STEP(i) acc##i = _mm512_dpbf16_ps(acc##i, a, b);
    MOE_PEAK_CHAINS(MOE_PEAK_STEP)
#undef MOE_PEAK_STEP
    __asm__ volatile(""
                     : "+v"(acc0), "+v"(acc1), "+v"(acc2), "+v"(acc3), "+v"(acc4), "+v"(acc5), "+v"(acc6),
                       "+v"(acc7), "+v"(acc8), "+v"(acc9), "+v"(acc10), "+v"(acc11));
  }
  volatile float sink = 0;
#define MOE_PEAK_SINK(i) sink = sink + _mm512_reduce_add_ps(acc##i);
  MOE_PEAK_CHAINS(MOE_PEAK_SINK)
#undef MOE_PEAK_SINK
  return 64.0 * kChains * static_cast<double>(iterations);
}
__attribute__((target("avx2,fma"))) double PeakLoopAvx2Fma(int64_t iterations) {
#define MOE_PEAK_INIT(i) __m256 acc##i = _mm256_set1_ps(static_cast<float>(i));
  MOE_PEAK_CHAINS(MOE_PEAK_INIT)
#undef MOE_PEAK_INIT
  const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-3f);
  for (int64_t it = 0; it < iterations; ++it) {
#define MOE_PEAK_STEP(i) acc##i = _mm256_fmadd_ps(acc##i, a, b);
    MOE_PEAK_CHAINS(MOE_PEAK_STEP)
#undef MOE_PEAK_STEP
    __asm__ volatile(""
                     : "+x"(acc0), "+x"(acc1), "+x"(acc2), "+x"(acc3), "+x"(acc4), "+x"(acc5), "+x"(acc6),
                       "+x"(acc7), "+x"(acc8), "+x"(acc9), "+x"(acc10), "+x"(acc11));
  }
  volatile float sink = 0;
#define MOE_PEAK_SINK(i) sink = sink + _mm256_cvtss_f32(acc##i);
  MOE_PEAK_CHAINS(MOE_PEAK_SINK)
#undef MOE_PEAK_SINK
  return 16.0 * kChains * static_cast<double>(iterations);
}
#endif
#undef MOE_PEAK_CHAINS

struct Peak {
  const char* instruction = "none";
  double gflops = 0;  // all pool threads
};

// Best of 10 passes of the peak loop on every pool thread at once (the best pass is the one least
// disturbed by other processes).
Peak MeasurePeak() {
  Peak peak;
#if defined(__x86_64__) && defined(__GNUC__)
  double (*loop)(int64_t) = nullptr;
  if (CpuSupports(Isa::kAvx512Bf16)) {
    loop = PeakLoopAvx512Bf16;
    peak.instruction = "vdpbf16ps zmm";
  } else if (CpuSupports(Isa::kAvx2Fma)) {
    loop = PeakLoopAvx2Fma;
    peak.instruction = "vfmadd ymm fp32";
  }
  if (loop == nullptr) return peak;
  ThreadPool& pool = ThreadPool::Global();
  const int64_t iterations = int64_t{1} << 21;
  for (int pass = 0; pass < 10; ++pass) {
    std::vector<double> flops(pool.num_threads());
    const auto t0 = Clock::now();
    pool.ParallelFor(pool.num_threads(), [&](int64_t t) { flops[t] = loop(iterations); });
    const double seconds = Seconds(t0, Clock::now());
    double total = 0;
    for (double f : flops) total += f;
    peak.gflops = std::max(peak.gflops, total / seconds / 1e9);
  }
#endif
  return peak;
}

struct Shape {
  const char* name;
  int64_t out_features, in_features;
};

double MedianOf(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// A thread pool that polls for `spin_us` between loops (--pool-spin-us).
struct SpinPool {
  int64_t spin_us;
  ThreadPool* pool;
};

// One shape and dtype at each row count. FP8 weights are timed with each kernel in `kernels`
// (internal::Fp8Kernel; bf16 ignores it) in `passes` interleaved rounds, so they see the same
// machine load; a line per kernel gives its median, and a last line the ratio of the first
// kernel's time to the others'. With `pools`, the variants are those thread pools instead.
void BenchLinear(const Shape& shape, bool fp8, const std::vector<int64_t>& rows_list, size_t pool_bytes,
                 double min_seconds, double read_gbs, double peak_gflops,
                 const std::vector<internal::Fp8Kernel>& kernels, bool label_kernels, int passes,
                 const std::vector<SpinPool>& pools) {
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
  // Variants timed against each other: the thread pools of --pool-spin-us if given, else the FP8
  // kernels.
  const size_t variants = !pools.empty() ? pools.size() : (fp8 ? kernels.size() : 1);
  const internal::Fp8Kernel saved = internal::ActiveFp8Kernel();
  size_t next = 1 % copies;
  for (int64_t rows : rows_list) {
    std::vector<std::vector<double>> times(variants);
    for (int pass = 0; pass < passes; ++pass) {
      for (size_t v = 0; v < variants; ++v) {
        if (fp8) internal::SetFp8KernelForTesting(kernels[pools.empty() ? v : 0]);
        std::optional<ScopedThreadPool> scoped;
        if (!pools.empty()) scoped.emplace(pools[v].pool);
        if (pass == 0) Linear(x.data(), rows, weights[0], y.data());  // warm up (scratch, threads)
        size_t calls = 0;
        const auto t0 = Clock::now();
        double elapsed = 0;
        while (elapsed < min_seconds || calls < copies) {
          Linear(x.data(), rows, weights[next], y.data());
          next = (next + 1) % copies;
          ++calls;
          elapsed = Seconds(t0, Clock::now());
        }
        times[v].push_back(elapsed / calls);
      }
    }
    std::vector<double> medians;
    for (size_t v = 0; v < variants; ++v) {
      const double per_call = MedianOf(times[v]);
      medians.push_back(per_call);
      const double weight_gbs = proto.WeightBytes() / per_call / 1e9;
      const double gflops = 2.0 * rows * shape.out_features * shape.in_features / per_call / 1e9;
      std::string dtype =
          !fp8 ? "bf16"
               : (label_kernels && pools.empty() ? std::string("fp8-") + internal::Fp8KernelName(kernels[v])
                                                 : "fp8");
      if (!pools.empty()) dtype += "/" + std::to_string(pools[v].spin_us);
      std::printf("%-8s %-14s %7s %5lld %10.1f %9.1f %7.2f %9.1f %7.3f\n", shape.name,
                  (std::to_string(shape.out_features) + "x" + std::to_string(shape.in_features)).c_str(),
                  dtype.c_str(), static_cast<long long>(rows), per_call * 1e6, weight_gbs,
                  weight_gbs / read_gbs, gflops, peak_gflops > 0 ? gflops / peak_gflops : 0.0);
    }
    for (size_t v = 1; v < variants; ++v) {
      if (!pools.empty()) {
        std::printf(
            "%-8s %5lld rows: time with pool spin %lld us / %lld us = %.3f (medians of %d interleaved "
            "passes)\n",
            shape.name, static_cast<long long>(rows), static_cast<long long>(pools[0].spin_us),
            static_cast<long long>(pools[v].spin_us), medians[0] / medians[v], passes);
        continue;
      }
      std::printf("%-8s %5lld rows: fp8 time %s / %s = %.3f (medians of %d interleaved passes)\n", shape.name,
                  static_cast<long long>(rows), internal::Fp8KernelName(kernels[0]),
                  internal::Fp8KernelName(kernels[v]), medians[0] / medians[v], passes);
    }
    std::fflush(stdout);
  }
  internal::SetFp8KernelForTesting(saved);
}

// Causal attention with Qwen3-30B-A3B's heads (32 query heads, 4 KV heads, head_dim 128) over a
// `tokens`-position sequence: the prefill of all of it from position 0 ("attn"), and the decode of
// its last position alone ("attn-dec"). Each implementation in `paths` (internal::AttentionPath) is
// timed in `passes` interleaved rounds, so they see the same machine load; the table gives each
// one's median time and QK^T + PV GFLOP/s (2 flops per multiply-add), and a last line the ratio of
// the medians of the first path to the others.
const char* PathName(internal::AttentionPath path) {
  switch (path) {
    case internal::AttentionPath::kAuto:
      return "auto";
    case internal::AttentionPath::kScalar:
      return "scalar";
    case internal::AttentionPath::kPerToken:
      return "pertoken";
    case internal::AttentionPath::kTiled:
      return "tiled";
    case internal::AttentionPath::kTiledFp32:
      return "tiledfp32";
  }
  return "?";
}

void BenchAttention(int64_t tokens, bool decode, const std::vector<internal::AttentionPath>& paths,
                    int passes, double min_seconds, double peak_gflops) {
  const int64_t heads = 32, kv_heads = 4, dim = 128, block_size = 16;
  const int64_t num_blocks = (tokens + block_size - 1) / block_size;
  const int64_t queries = decode ? 1 : tokens, start = tokens - queries;
  std::vector<bf16> q(queries * heads * dim), out(queries * heads * dim);
  std::vector<bf16> k(num_blocks * block_size * kv_heads * dim), v(k.size());
  uint64_t s = 7;
  auto fill = [&](std::vector<bf16>& a) {
    for (bf16& x : a)
      x = FloatToBF16(static_cast<float>(static_cast<int64_t>(NextRandom(s) % 2001) - 1000) / 1000.0f);
  };
  fill(q);
  fill(k);
  fill(v);
  std::vector<int32_t> table(num_blocks);
  for (int64_t b = 0; b < num_blocks; ++b)
    table[b] = static_cast<int32_t>(num_blocks - 1 - b);  // not in order
  const PagedKv kv{k.data(), v.data(), block_size, kv_heads, dim};
  auto run = [&](internal::AttentionPath path) {
    internal::PagedAttentionWithPath(path, q.data(), heads * dim, queries, start, heads, 0.08838834764f,
                                     table.data(), kv, out.data(), heads * dim);
  };
  std::vector<std::vector<double>> times(paths.size());
  for (int pass = 0; pass < passes; ++pass) {
    for (size_t i = 0; i < paths.size(); ++i) {
      if (pass == 0) run(paths[i]);  // warm up (scratch, caches)
      size_t calls = 0;
      const auto t0 = Clock::now();
      double elapsed = 0;
      while (elapsed < min_seconds || calls < 1) {
        run(paths[i]);
        ++calls;
        elapsed = Seconds(t0, Clock::now());
      }
      times[i].push_back(elapsed / calls);
    }
  }
  // Query q at position start + q sees start + q + 1 keys.
  const double pairs = decode ? static_cast<double>(tokens) : tokens * (tokens + 1) / 2.0;
  std::vector<double> medians;
  for (size_t i = 0; i < paths.size(); ++i) {
    const double per_call = MedianOf(times[i]);
    medians.push_back(per_call);
    const double gflops = 4.0 * dim * heads * pairs / per_call / 1e9;
    std::printf("%-8s %-14s %7s %5lld %10.1f %9s %7s %9.1f %7.3f\n", decode ? "attn-dec" : "attn",
                (std::string("32q/4kv ") + PathName(paths[i])).c_str(), "bf16",
                static_cast<long long>(tokens), per_call * 1e6, "-", "-", gflops,
                peak_gflops > 0 ? gflops / peak_gflops : 0.0);
  }
  for (size_t i = 1; i < paths.size(); ++i) {
    std::printf("%-8s %5lld tokens: time %s / %s = %.3f (medians of %d interleaved passes)\n",
                decode ? "attn-dec" : "attn", static_cast<long long>(tokens), PathName(paths[0]),
                PathName(paths[i]), medians[0] / medians[i], passes);
  }
  std::fflush(stdout);
}

}  // namespace
}  // namespace moe::kernels::cpu

int main(int argc, char** argv) {
  using namespace moe::kernels::cpu;
  CLI::App app{"CPU kernel benchmarks: memory bandwidth and Linear on Qwen3-30B-A3B shapes"};
  double buffer_mib = 1024, pool_mib = 1024, min_seconds = 0.3;
  bool skip_prefill = false;
  std::vector<std::string> layers;
  std::vector<int64_t> rows_option;
  std::vector<int64_t> attention_tokens = {512};
  std::vector<std::string> attention_paths = {"tiled", "pertoken", "scalar"};
  int attention_passes = 3;
  std::string dtype = "all";
  app.add_option("--buffer-mib", buffer_mib, "Size of each bandwidth test buffer (MiB)");
  app.add_option("--pool-mib", pool_mib, "Total bytes of weight copies cycled per shape (MiB)");
  app.add_option("--min-seconds", min_seconds, "Minimum timed seconds per measurement");
  app.add_flag("--skip-prefill", skip_prefill, "Skip the 512-row measurements");
  app.add_option("--rows", rows_option, "Row counts to measure (default 1 8 32 512)");
  app.add_option("--attention-tokens", attention_tokens,
                 "Sequence lengths of the attention measurements (default 512; 0: skip)");
  app.add_option("--attention-paths", attention_paths,
                 "Attention implementations to time, the first against the others (tiledfp32: tiled without "
                 "VDPBF16PS; default tiled pertoken "
                 "scalar)")
      ->check(CLI::IsMember({"auto", "tiled", "tiledfp32", "pertoken", "scalar"}));
  app.add_option("--attention-passes", attention_passes, "Interleaved rounds per attention measurement");
  bool only_attention = false;
  app.add_flag("--only-attention", only_attention, "Skip the bandwidth, peak and Linear measurements");
  app.add_option("--layers", layers, "Only these layers (q_proj, kv_proj, o_proj, expert, down, lm_head)");
  app.add_option("--dtype", dtype, "Only this weight dtype: bf16, fp8 or all")
      ->check(CLI::IsMember({"bf16", "fp8", "all"}));
  std::vector<std::string> fp8_kernel_names;
  int linear_passes = 1;
  app.add_option(
         "--fp8-kernels", fp8_kernel_names,
         "AVX-512 FP8 kernels to time, the first against the others (dot, fma; default: the one Linear "
         "uses). Without AVX-512 BF16 and VBMI every name runs the ISA's one FP8 path")
      ->check(CLI::IsMember({"dot", "fma"}));
  app.add_option("--linear-passes", linear_passes, "Interleaved rounds per Linear measurement (median)");
  std::vector<int64_t> pool_spins;
  app.add_option("--pool-spin-us", pool_spins,
                 "Time each Linear with thread pools (as many threads as the global one) that poll this "
                 "long between loops, the first against the others (e.g. 0 200); instead of --fp8-kernels")
      ->check(CLI::Range(int64_t{0}, int64_t{100000}));
  CLI11_PARSE(app, argc, argv);
  std::vector<std::unique_ptr<ThreadPool>> spin_pools;
  std::vector<SpinPool> pools;
  for (int64_t spin : pool_spins) {
    spin_pools.push_back(std::make_unique<ThreadPool>(ThreadPool::Global().num_threads(), spin));
    pools.push_back({spin, spin_pools.back().get()});
  }
  std::vector<internal::Fp8Kernel> fp8_kernels;
  for (const std::string& name : fp8_kernel_names)
    fp8_kernels.push_back(name == "fma" ? internal::Fp8Kernel::kFma : internal::Fp8Kernel::kDot);
  if (fp8_kernels.empty()) fp8_kernels.push_back(internal::ActiveFp8Kernel());

  std::printf("isa=%s fp8_kernel=%s threads=%d\n", KernelIsa(),
              internal::Fp8KernelName(internal::ActiveFp8Kernel()), ThreadPool::Global().num_threads());
  Bandwidth bw{};
  if (!only_attention) {
    bw = MeasureBandwidth(static_cast<size_t>(buffer_mib * 1048576), 5);
    std::printf("copy bandwidth (read+write): %.1f GB/s\nread bandwidth (streaming sum): %.1f GB/s\n",
                bw.copy_gbs, bw.read_gbs);
  }
  const Peak peak = MeasurePeak();
  std::printf("compute peak (%s, register-blocked): %.1f GFLOP/s\n\n", peak.instruction, peak.gflops);
  std::printf("%-8s %-14s %7s %5s %10s %9s %7s %9s %7s\n", "layer", "N x K", "dtype", "rows", "us/call",
              "weightGB/s", "ratio", "GFLOP/s", "peak");
  // Qwen3-30B-A3B: q_proj Hq*D x H, k_proj and v_proj Hkv*D x H, o_proj H x Hq*D, experts' gate and
  // up I x H, down H x I, lm_head V x H.
  const Shape shapes[] = {{"q_proj", 4096, 2048}, {"kv_proj", 512, 2048}, {"o_proj", 2048, 4096},
                          {"expert", 768, 2048},  {"down", 2048, 768},    {"lm_head", 151936, 2048}};
  for (const Shape& shape : shapes) {
    if (only_attention) break;
    if (!layers.empty() && std::find(layers.begin(), layers.end(), shape.name) == layers.end()) continue;
    for (bool fp8 : {false, true}) {
      if (dtype != "all" && (dtype == "fp8") != fp8) continue;
      std::vector<int64_t> rows = {1, 8, 32};
      // 512 rows of lm_head never happen (only the last position needs logits).
      if (!skip_prefill && shape.out_features < 100000) rows.push_back(512);
      if (!rows_option.empty()) rows = rows_option;
      BenchLinear(shape, fp8, rows, static_cast<size_t>(pool_mib * 1048576), min_seconds, bw.read_gbs,
                  peak.gflops, fp8_kernels, !fp8_kernel_names.empty(), std::max(1, linear_passes), pools);
    }
  }
  std::vector<internal::AttentionPath> paths;
  for (const std::string& name : attention_paths) {
    paths.push_back(name == "tiled"       ? internal::AttentionPath::kTiled
                    : name == "tiledfp32" ? internal::AttentionPath::kTiledFp32
                    : name == "pertoken"  ? internal::AttentionPath::kPerToken
                    : name == "scalar"    ? internal::AttentionPath::kScalar
                                          : internal::AttentionPath::kAuto);
  }
  for (int64_t tokens : attention_tokens) {
    if (tokens <= 0) continue;
    BenchAttention(tokens, /*decode=*/false, paths, std::max(1, attention_passes), min_seconds, peak.gflops);
    BenchAttention(tokens, /*decode=*/true, paths, std::max(1, attention_passes), min_seconds, peak.gflops);
  }
  // Measured again at the end: a large difference means the machine's load changed during the run.
  const Peak peak_after = MeasurePeak();
  std::printf("\ncompute peak at the end: %.1f GFLOP/s\n", peak_after.gflops);
  std::printf(
      "ratio = effective weight bandwidth / read bandwidth measured above; peak = GFLOP/s / compute "
      "peak measured above.\n");
  return 0;
}
