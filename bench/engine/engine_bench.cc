// engine_bench: decode step time at several batch sizes and prefill throughput of the embedded
// engine, each against the memory-bandwidth roofline measured in the same run
// (docs/contributing.md#benchmarks):
//
//   ratio = (weight bytes the step touches / step time) / copy bandwidth
//
// "Copy bandwidth" has two conventions, so both are printed: memcpy rate (bytes copied per second,
// as memcpy benchmarks report it) and STREAM-style copy traffic (bytes read + bytes written per
// second, twice the former). The read-only streaming bandwidth is printed too.
//
// Weight bytes per step = every dense weight (attention, router, lm_head) + the weights of each
// distinct expert the step's tokens were routed to (counted from the expert blocks' token counters)
// + the embedding rows read. Copy bandwidth counts read + write bytes of a large memcpy on all
// pool threads; the read-only bandwidth is printed too.
//
// --device cuda:N runs the dense forward pass on the GPU (CudaAttentionBlock; embedded experts stay
// on the CPU until the CUDA expert side exists). The roofline is then the device's HBM bandwidth,
// measured here as gpu_kernels_bench does (a 1 GiB device-to-device copy, read + write bytes), and
// the ratio counts only the dense weight bytes the GPU reads per step (not the CPU's experts).
// --jsonl FILE writes one JSON object per measurement (scripts/gpu_check.sh puts them in its
// summary); --make-preset makes the --model directory first when it holds no model.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/util/memory_bandwidth.h"
#include "common/engine/engine.h"
#include "common/engine/testing/requests.h"
#include "common/kernels/device_spec.h"
#include "common/model_maker/make_model.h"
#ifdef MOE_BENCH_WITH_CUDA
#include "common/kernels/cuda/cuda_kernels.h"
#endif

namespace moe::engine {
namespace {

using engine_testing::GreedyRequest;
using engine_testing::PseudoRandomPrompt;

using Clock = std::chrono::steady_clock;

double PeakRssGiB() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / (1024.0 * 1024.0);
  }
  return 0.0;
}

int64_t DenseBytesPerStep(const model::DenseWeights& w, int64_t num_experts, int64_t hidden) {
  int64_t bytes = w.lm_head.WeightBytes();
  for (const auto& layer : w.layers) {
    bytes += layer.q_proj.WeightBytes() + layer.k_proj.WeightBytes() + layer.v_proj.WeightBytes() +
             layer.o_proj.WeightBytes();
    if (layer.router != nullptr) bytes += num_experts * hidden * 2;
    if (layer.dense_mlp.gate_proj.data != nullptr) {
      bytes += layer.dense_mlp.gate_proj.WeightBytes() + layer.dense_mlp.up_proj.WeightBytes() +
               layer.dense_mlp.down_proj.WeightBytes();
    }
  }
  return bytes;
}

// The in-process expert blocks (none for a dense model).
const std::vector<std::unique_ptr<ExpertBlock>>& ExpertBlocks(const Engine& engine) {
  static const std::vector<std::unique_ptr<ExpertBlock>> kNone;
  return engine.embedded_experts() != nullptr ? engine.embedded_experts()->blocks() : kNone;
}

// Bytes of the experts whose token counters moved between two snapshots.
int64_t ExpertBytesTouched(const Engine& engine,
                           const std::vector<std::vector<std::vector<uint64_t>>>& before) {
  int64_t bytes = 0;
  const auto& blocks = ExpertBlocks(engine);
  for (size_t b = 0; b < blocks.size(); ++b) {
    const auto after = blocks[b]->TokenCounts();
    for (size_t l = 0; l < after.size(); ++l) {
      for (size_t e = 0; e < after[l].size(); ++e) {
        if (after[l][e] != before[b][l][e]) bytes += blocks[b]->ExpertWeightBytes(static_cast<int64_t>(l));
      }
    }
  }
  return bytes;
}

std::vector<std::vector<std::vector<uint64_t>>> Snapshot(const Engine& engine) {
  std::vector<std::vector<std::vector<uint64_t>>> s;
  for (const auto& block : ExpertBlocks(engine)) s.push_back(block->TokenCounts());
  return s;
}

// Read + write bytes per second of a 1 GiB device-to-device copy on `device` (gpu_kernels_bench's
// HBM roofline), best of 10 after a warm-up.
absl::StatusOr<double> DeviceCopyBandwidth(const kernels::DeviceSpec& device) {
#ifdef MOE_BENCH_WITH_CUDA
  namespace cuda = kernels::cuda;
  if (absl::Status s = cuda::SetDevice(device.ordinal); !s.ok()) return s;
  const size_t bytes = size_t{1} << 30;
  absl::StatusOr<void*> src = cuda::Malloc(bytes, "the copy roofline's source");
  if (!src.ok()) return src.status();
  absl::StatusOr<void*> dst = cuda::Malloc(bytes, "the copy roofline's destination");
  if (!dst.ok()) {
    cuda::Free(*src);
    return dst.status();
  }
  double best = 0.0;
  absl::Status status;
  for (int i = 0; i < 11 && status.ok(); ++i) {
    const auto t0 = Clock::now();
    status = cuda::CopyDeviceToDevice(*dst, *src, bytes, nullptr);
    if (status.ok()) status = cuda::Synchronize(nullptr);
    const double t = std::chrono::duration<double>(Clock::now() - t0).count();
    if (i > 0) best = std::max(best, 2.0 * static_cast<double>(bytes) / t);
  }
  cuda::Free(*src);
  cuda::Free(*dst);
  if (!status.ok()) return status;
  return best;
#else
  return absl::FailedPreconditionError(
      absl::StrCat("--device ", device.ToString(), ": engine_bench was built without CUDA"));
#endif
}

// One measurement as a JSON line (for scripts/gpu_check.sh's summary).
void WriteJson(std::FILE* jsonl, const std::string& name, const std::string& device, int64_t size, double ms,
               double weight_gb, double tokens_per_s, double fraction) {
  if (jsonl == nullptr) return;
  std::fprintf(
      jsonl,
      "{\"name\":\"%s\",\"device\":\"%s\",\"size\":%lld,\"step_ms\":%.3f,\"weight_gb_per_step\":%.4f,"
      "\"tokens_per_s\":%.1f,\"fraction_of_roofline\":%.3f}\n",
      name.c_str(), device.c_str(), static_cast<long long>(size), ms, weight_gb, tokens_per_s,
      std::isfinite(fraction) ? fraction : 0.0);
  std::fflush(jsonl);
}

int Main(int argc, char** argv) {
  CLI::App app{"Embedded-engine decode and prefill benchmark with roofline ratios"};
  std::string model_dir, batches_flag = "1,8,32", prefill_flag = "512", device_flag = "cpu";
  std::string make_preset, make_dtype = "fp8", jsonl_path;
  int64_t context = 64, decode_steps = 8, bandwidth_mib = 1024;
  int expert_shards = 1;
  app.add_option("--model", model_dir, "Model directory (e.g. from make-model --preset bench-30b-4l)")
      ->required();
  app.add_option("--make-preset", make_preset,
                 "When --model holds no config.json: make this preset there first (e.g. bench-30b-4l)");
  app.add_option("--make-dtype", make_dtype, "dtype of --make-preset (bf16 or fp8)");
  app.add_option("--device", device_flag, "cpu or cuda[:N]: where the dense forward pass runs");
  app.add_option("--jsonl", jsonl_path, "Also write one JSON object per measurement to this file");
  app.add_option("--batches", batches_flag, "Comma-separated decode batch sizes");
  app.add_option("--context", context, "Prompt length of each decoding sequence");
  app.add_option("--decode-steps", decode_steps, "Timed decode steps per batch size");
  app.add_option("--prefill-tokens", prefill_flag,
                 "Comma-separated prompt lengths of the prefill measurements");
  app.add_option("--bandwidth-mib", bandwidth_mib, "Buffer size of the bandwidth measurement");
  app.add_option("--expert-shards", expert_shards, "In-process expert shards");
  CLI11_PARSE(app, argc, argv);
  std::vector<int64_t> batches;
  for (absl::string_view part : absl::StrSplit(batches_flag, ',', absl::SkipEmpty())) {
    int64_t b;
    if (!absl::SimpleAtoi(part, &b) || b < 1) {
      std::fprintf(stderr, "engine_bench: --batches: bad size '%s'\n", std::string(part).c_str());
      return 2;
    }
    batches.push_back(b);
  }
  std::vector<int64_t> prefills;
  for (absl::string_view part : absl::StrSplit(prefill_flag, ',', absl::SkipEmpty())) {
    int64_t p;
    if (!absl::SimpleAtoi(part, &p) || p < 1) {
      std::fprintf(stderr, "engine_bench: --prefill-tokens: bad length '%s'\n", std::string(part).c_str());
      return 2;
    }
    prefills.push_back(p);
  }
  if (prefills.empty()) {
    std::fprintf(stderr, "engine_bench: --prefill-tokens: no length\n");
    return 2;
  }
  absl::StatusOr<kernels::DeviceSpec> device = kernels::ParseDeviceSpec(device_flag, "--device");
  if (!device.ok()) {
    std::fprintf(stderr, "engine_bench: %s\n", device.status().ToString().c_str());
    return 2;
  }
  if (!std::filesystem::exists(std::filesystem::path(model_dir) / "config.json")) {
    if (make_preset.empty()) {
      std::fprintf(stderr,
                   "engine_bench: --model: %s holds no config.json (pass --make-preset to make one)\n",
                   model_dir.c_str());
      return 2;
    }
    model_maker::MakeModelOptions make;
    make.preset = make_preset;
    make.dtype = make_dtype;
    make.out_dir = model_dir;
    make.force = true;
    const auto t_make = Clock::now();
    if (absl::Status s = model_maker::MakeModel(make); !s.ok()) {
      std::fprintf(stderr, "engine_bench: --make-preset: %s\n", s.ToString().c_str());
      return 1;
    }
    std::printf("made %s (%s) in %.1f s\n", make_preset.c_str(), make_dtype.c_str(),
                std::chrono::duration<double>(Clock::now() - t_make).count());
  }
  std::FILE* jsonl = nullptr;
  if (!jsonl_path.empty()) {
    jsonl = std::fopen(jsonl_path.c_str(), "w");
    if (jsonl == nullptr) {
      std::fprintf(stderr, "engine_bench: --jsonl: cannot write %s\n", jsonl_path.c_str());
      return 2;
    }
  }
  const int64_t max_prefill = *std::max_element(prefills.begin(), prefills.end());

  const auto t_load = Clock::now();
  EngineOptions options;
  options.max_step_tokens = std::max<int64_t>(max_prefill, 512);
  options.kv_cache_bytes = int64_t{2} << 30;
  options.device = *device;
  auto created = Engine::CreateEmbedded(model_dir, options, expert_shards);
  if (!created.ok()) {
    std::fprintf(stderr, "engine_bench: %s\n", created.status().ToString().c_str());
    return 1;
  }
  Engine& engine = **created;
  auto warm = engine.PromptLogits(PseudoRandomPrompt(16, 99));
  if (!warm.ok()) {
    std::fprintf(stderr, "engine_bench: %s\n", warm.status().ToString().c_str());
    return 1;
  }
  const double load_s = std::chrono::duration<double>(Clock::now() - t_load).count();
  // Steady state: the weights in the memory they are served from once the background copy into
  // huge pages (MOE_WEIGHTS_MEMORY=huge_pages, the default where THP is on) is made and switched to.
  const auto t_switch = Clock::now();
  engine.WaitForHugePages();
  const double switch_s = std::chrono::duration<double>(Clock::now() - t_switch).count();
  const double rss_after_load = PeakRssGiB();

  // The roofline: the host's memory bandwidth for the CPU engine, the device's HBM for a cuda one
  // (copy traffic only: memcpy rate is half of it, and no read-only figure is measured there).
  bench::Bandwidth bw;
  if (device->is_cuda()) {
    absl::StatusOr<double> hbm = DeviceCopyBandwidth(*device);
    if (!hbm.ok()) {
      std::fprintf(stderr, "engine_bench: %s\n", hbm.status().ToString().c_str());
      return 1;
    }
    bw.copy_gbs = *hbm / 1e9;
    bw.read_gbs = std::nan("");
    WriteJson(jsonl, "roofline_hbm_copy", device->ToString(), 1 << 30, 0, 0, 0, 1.0);
  } else {
    bw = bench::MeasureBandwidth(static_cast<size_t>(bandwidth_mib) << 20, 3);
  }
  const model::ModelConfig& config = engine.config();
  const int64_t dense_bytes =
      DenseBytesPerStep(engine.dense_weights(), config.num_experts, config.hidden_size);
  std::printf("model: %s  device: %s  layers=%lld hidden=%lld experts=%lld  kernels: %s  threads: %d\n",
              model_dir.c_str(), device->ToString().c_str(), static_cast<long long>(config.num_hidden_layers),
              static_cast<long long>(config.hidden_size), static_cast<long long>(config.num_experts),
              kernels::cpu::KernelIsa(), kernels::cpu::ThreadPool::Global().num_threads());
  std::printf("load + first forward: %.1f s, peak RSS %.2f GiB\n", load_s, rss_after_load);
  std::printf("weights memory: %s, %.1f s more until switched to\n",
              model::WeightsMemoryName(model::WeightsMemoryFromEnv()), switch_s);
  const double memcpy_gbs = bw.copy_gbs / 2;
  std::printf(
      "memcpy rate (bytes copied): %.1f GB/s, copy traffic (read+write): %.1f GB/s, "
      "read bandwidth: %.1f GB/s\n\n",
      memcpy_gbs, bw.copy_gbs, bw.read_gbs);
  std::printf("%-10s %8s %12s %14s %12s %10s %10s %10s\n", "phase", "batch", "step ms", "weight GB/step",
              "tokens/s", "vs memcpy", "vs r+w", "vs read");

  for (int64_t batch : batches) {
    for (int64_t i = 0; i < batch; ++i) {
      absl::Status s = engine.AddRequest(GreedyRequest(
          "d" + std::to_string(i), PseudoRandomPrompt(context, static_cast<uint32_t>(i)), decode_steps + 4));
      if (!s.ok()) {
        std::fprintf(stderr, "engine_bench: %s\n", s.ToString().c_str());
        return 1;
      }
    }
    // Prefill (and one decode) untimed, so the timed steps are pure decode of `batch` rows.
    for (int i = 0; i < 2 + (batch * context) / options.max_step_tokens; ++i) engine.Step();
    std::vector<double> times;
    int64_t bytes = 0;
    for (int64_t s = 0; s < decode_steps; ++s) {
      const auto before = Snapshot(engine);
      const auto t0 = Clock::now();
      engine.Step();
      times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      // On a GPU the experts run on the CPU: the device roofline counts the dense bytes only.
      bytes += dense_bytes + (device->is_cuda() ? 0 : ExpertBytesTouched(engine, before)) +
               batch * config.hidden_size * 2;
    }
    while (engine.HasWork()) engine.Step();
    std::sort(times.begin(), times.end());
    const double median = times[times.size() / 2];
    const double step_bytes = static_cast<double>(bytes) / static_cast<double>(decode_steps);
    const double gbs = step_bytes / median / 1e9;
    std::printf("%-10s %8lld %12.2f %14.3f %12.1f %10.2f %10.2f %10.2f\n", "decode",
                static_cast<long long>(batch), median * 1e3, step_bytes / 1e9, batch / median,
                gbs / memcpy_gbs, gbs / bw.copy_gbs, gbs / bw.read_gbs);
    WriteJson(jsonl, "engine_decode_b" + std::to_string(batch), device->ToString(), batch, median * 1e3,
              step_bytes / 1e9, batch / median, gbs / bw.copy_gbs);
  }

  for (int64_t prefill_tokens : prefills) {
    const auto before = Snapshot(engine);
    absl::Status s = engine.AddRequest(
        GreedyRequest("p" + std::to_string(prefill_tokens), PseudoRandomPrompt(prefill_tokens, 7), 1));
    if (!s.ok()) {
      std::fprintf(stderr, "engine_bench: %s\n", s.ToString().c_str());
      return 1;
    }
    const auto t0 = Clock::now();
    while (engine.HasWork()) engine.Step();
    const double t = std::chrono::duration<double>(Clock::now() - t0).count();
    const double step_bytes =
        static_cast<double>(dense_bytes + (device->is_cuda() ? 0 : ExpertBytesTouched(engine, before)));
    const double gbs = step_bytes / t / 1e9;
    std::printf("%-10s %8lld %12.2f %14.3f %12.1f %10.2f %10.2f %10.2f\n", "prefill",
                static_cast<long long>(prefill_tokens), t * 1e3, step_bytes / 1e9, prefill_tokens / t,
                gbs / memcpy_gbs, gbs / bw.copy_gbs, gbs / bw.read_gbs);
    WriteJson(jsonl, "engine_prefill_" + std::to_string(prefill_tokens), device->ToString(), prefill_tokens,
              t * 1e3, step_bytes / 1e9, prefill_tokens / t, gbs / bw.copy_gbs);
  }
  if (jsonl != nullptr) std::fclose(jsonl);
  std::printf("\npeak RSS: %.2f GiB\n", PeakRssGiB());
  return 0;
}

}  // namespace
}  // namespace moe::engine

int main(int argc, char** argv) {
  return moe::engine::Main(argc, argv);
}
