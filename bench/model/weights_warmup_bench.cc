// weights_warmup_bench: how long a fresh worker takes to bring its weights in before it serves
// (common/model/weight_warmup.h), one process per run so its page tables start empty:
//
//   weights_warmup_bench --model DIR [--threads N] [--touch] [--evict]
//
// Resolves the dense weights and one shard of every expert, as an embedded engine does, then warms
// them up and prints bytes, seconds, GB/s and this process's minor/major page faults. --touch
// takes the fallback of kernels before 5.14 (readahead + one read per page) in every chunk; with
// --threads 1 that is what loading did before the warm-up became parallel. --evict first asks the
// kernel to drop the checkpoint's clean pages from the page cache (posix_fadvise DONTNEED, no
// root needed; pages another process maps stay), so the run reads from the disk: a cold start.
// It prints how much of the checkpoint was still cached before the warm-up.
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "common/model/checkpoint.h"
#include "common/model/config.h"
#include "common/model/weights.h"

namespace moe::model {
namespace {

std::vector<std::string> SafetensorsFiles(const std::string& dir) {
  std::vector<std::string> files;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name.size() > 12 && name.substr(name.size() - 12) == ".safetensors")
        files.push_back(dir + "/" + name);
    }
    closedir(d);
  }
  return files;
}

// Fraction of the files' pages in the page cache (mincore over a fresh mapping of each).
double CachedFraction(const std::vector<std::string>& files) {
  const long page = sysconf(_SC_PAGESIZE);
  int64_t pages = 0, cached = 0;
  for (const std::string& f : files) {
    const int fd = open(f.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    const off_t size = lseek(fd, 0, SEEK_END);
    void* map =
        size > 0 ? mmap(nullptr, static_cast<size_t>(size), PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    close(fd);
    if (map == MAP_FAILED) continue;
    std::vector<unsigned char> vec(static_cast<size_t>((size + page - 1) / page));
    if (mincore(map, static_cast<size_t>(size), vec.data()) == 0) {
      for (unsigned char v : vec) cached += v & 1;
      pages += static_cast<int64_t>(vec.size());
    }
    munmap(map, static_cast<size_t>(size));
  }
  return pages > 0 ? static_cast<double>(cached) / static_cast<double>(pages) : 0.0;
}

void Evict(const std::vector<std::string>& files) {
  for (const std::string& f : files) {
    const int fd = open(f.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
  }
}

int Run(int argc, char** argv) {
  CLI::App app{"Weight warm-up of a fresh worker: bytes, seconds, GB/s"};
  std::string model_dir;
  int threads = 0;
  bool touch = false;
  bool evict = false;
  app.add_option("--model", model_dir, "Hugging Face model directory")
      ->required()
      ->check(CLI::ExistingDirectory);
  app.add_option("--threads", threads, "Warm-up threads (0: the default)")->check(CLI::Range(0, 256));
  app.add_flag("--touch", touch, "Readahead + one read per page instead of MADV_POPULATE_READ");
  std::string memory = "auto";
  app.add_option("--memory", memory,
                 "Where the weights go: mapped, huge_pages (timed here as the copy it makes, which a "
                 "worker makes in the background), huge_pages_at_load, or auto (MOE_WEIGHTS_MEMORY's rule)")
      ->check([](const std::string& v) {
        return ParseWeightsMemory(v).has_value() ? std::string()
                                                 : "not mapped, huge_pages, huge_pages_at_load or auto";
      });
  app.add_flag("--evict", evict, "Drop the checkpoint from the page cache first (a cold start)");
  CLI11_PARSE(app, argc, argv);

  const std::vector<std::string> files = SafetensorsFiles(model_dir);
  if (evict) Evict(files);
  std::printf("page cache: %.0f%% of the checkpoint cached before the warm-up%s\n",
              100 * CachedFraction(files), evict ? " (after --evict)" : "");
  auto config = ModelConfig::FromFile(model_dir + "/config.json");
  if (!config.ok()) return std::fprintf(stderr, "%s\n", config.status().ToString().c_str()), 1;
  auto checkpoint = Checkpoint::Open(model_dir);
  if (!checkpoint.ok()) return std::fprintf(stderr, "%s\n", checkpoint.status().ToString().c_str()), 1;
  auto dense = LoadDenseWeights(**checkpoint, *config);
  if (!dense.ok()) return std::fprintf(stderr, "%s\n", dense.status().ToString().c_str()), 1;
  auto experts = LoadExpertShard(**checkpoint, *config, 0, config->num_experts);
  if (!experts.ok()) return std::fprintf(stderr, "%s\n", experts.status().ToString().c_str()), 1;

  const WarmUpOptions options{
      .num_threads = threads, .populate_read = !touch, .memory = *ParseWeightsMemory(memory)};
  rusage before{};
  getrusage(RUSAGE_SELF, &before);
  const WarmUpResult d = PrefaultWeights(**dense, options);
  const WarmUpResult e = PrefaultWeights(**experts, options);
  rusage after{};
  getrusage(RUSAGE_SELF, &after);
  for (const auto& [name, r] : {std::pair{"dense", d}, std::pair{"experts", e}}) {
    std::printf("%-8s %8.3f GiB in %7.3f s = %6.2f GB/s, %d threads, %s%s\n", name, r.bytes / double(1 << 30),
                r.seconds, r.BytesPerSecond() / 1e9, r.num_threads,
                r.populate ? "MADV_POPULATE_READ" : "readahead + touch",
                r.copy != nullptr ? ", copied into huge pages" : "");
  }
  const double seconds = d.seconds + e.seconds;
  std::printf("warm-up  %8.3f GiB in %7.3f s = %6.2f GB/s; page faults: %ld minor, %ld major\n",
              (d.bytes + e.bytes) / double(1 << 30), seconds, (d.bytes + e.bytes) / seconds / 1e9,
              after.ru_minflt - before.ru_minflt, after.ru_majflt - before.ru_majflt);
  return 0;
}

}  // namespace
}  // namespace moe::model

int main(int argc, char** argv) {
  return moe::model::Run(argc, argv);
}
