#include "common/model/weight_warmup.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "common/model/load_progress.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22  // Linux 5.14 uapi value; older headers lack it, older kernels say EINVAL
#endif

namespace moe::model {
namespace {

uintptr_t PageSize() {
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  return page;
}

// Readahead for the chunk, then one read per page: the fallback when MADV_POPULATE_READ is missing.
void TouchPages(const uint8_t* begin, size_t bytes) {
  madvise(const_cast<uint8_t*>(begin), bytes, MADV_WILLNEED);
  volatile uint8_t sink = 0;
  for (size_t offset = 0; offset < bytes; offset += PageSize()) sink = sink + begin[offset];
}

// Populates one chunk; false when it took the fallback.
bool PopulateChunk(const uint8_t* begin, size_t bytes, bool populate_read) {
  // EINVAL: a kernel before 5.14. EINTR/EAGAIN: the kernel gave up part way (a signal, a page it
  // must retry). Either way the loop below, which is always correct, does the rest.
  if (populate_read && madvise(const_cast<uint8_t*>(begin), bytes, MADV_POPULATE_READ) == 0) return true;
  TouchPages(begin, bytes);
  return false;
}

// The whole pages inside [data, data + bytes), as [begin, end) (empty when end <= begin).
std::pair<uintptr_t, uintptr_t> PagesInside(const void* data, int64_t bytes) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(data);
  return {(a + PageSize() - 1) & ~(PageSize() - 1), (a + static_cast<uintptr_t>(bytes)) & ~(PageSize() - 1)};
}

constexpr size_t kHugePage = size_t{2} << 20;

// An anonymous mapping of `bytes` (rounded up to whole huge pages) starting on a huge-page boundary,
// marked for transparent huge pages before anything touches it; null when mmap fails.
void* MapHugePageArena(size_t bytes, size_t* mapped_bytes) {
  const size_t size = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* raw = mmap(nullptr, size + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  // Trim the mapping to the aligned part, so every huge page of the arena can be one.
  const uintptr_t begin = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (begin + kHugePage - 1) & ~(kHugePage - 1);
  if (aligned > begin) munmap(raw, aligned - begin);
  const uintptr_t end = begin + size + kHugePage;
  if (end > aligned + size) munmap(reinterpret_cast<void*>(aligned + size), end - (aligned + size));
  madvise(reinterpret_cast<void*>(aligned), size, MADV_HUGEPAGE);
  *mapped_bytes = size;
  return reinterpret_cast<void*>(aligned);
}

bool TransparentHugePagesEnabled() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  if (!std::getline(in, line)) return false;
  return line.find("[always]") != std::string::npos || line.find("[madvise]") != std::string::npos;
}

using Spans = std::vector<std::pair<uintptr_t, uintptr_t>>;  // [begin, end), sorted by begin

// Calls fn(b, e) for each non-empty intersection of [begin, end) with one of `spans`. A linear
// scan: a few thousand ranges at most, against a 64 MiB copy per chunk.
template <typename Fn>
void ForEachOverlap(const Spans& spans, uintptr_t begin, uintptr_t end, Fn fn) {
  for (const auto& [sb, se] : spans) {
    if (sb >= end) break;
    const uintptr_t b = std::max(sb, begin), e = std::min(se, end);
    if (e > b) fn(b, e);
  }
}

// Copies the bytes of `chunk` that the ranges asked for (only those: the rest of a page may be
// another heap object's) to `copy`, the chunk's place in the arena; then drops from the page tables
// the pages of the chunk that lie wholly inside a releasable range.
void CopyChunk(const MemoryRange& chunk, uint8_t* copy, const Spans& exact, const Spans& releasable) {
  const uintptr_t begin = reinterpret_cast<uintptr_t>(chunk.data);
  const uintptr_t end = begin + static_cast<uintptr_t>(chunk.bytes);
  ForEachOverlap(exact, begin, end, [&](uintptr_t b, uintptr_t e) {
    std::memcpy(copy + (b - begin), reinterpret_cast<const void*>(b), e - b);
  });
  ForEachOverlap(releasable, begin, end,
                 [](uintptr_t b, uintptr_t e) { madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED); });
}

int DefaultThreads() {
  const int hw = static_cast<int>(std::thread::hardware_concurrency());
  return std::clamp(hw, 4, 16);
}

}  // namespace

std::optional<WeightsMemory> ParseWeightsMemory(std::string_view name) {
  if (name == "mapped") return WeightsMemory::kMapped;
  if (name == "huge_pages") return WeightsMemory::kHugePages;
  if (name == "huge_pages_at_load") return WeightsMemory::kHugePagesAtLoad;
  if (name == "auto")
    return TransparentHugePagesEnabled() ? WeightsMemory::kHugePages : WeightsMemory::kMapped;
  return std::nullopt;
}

WeightsMemory WeightsMemoryFromEnv() {
  static const WeightsMemory memory = [] {
    const char* env = std::getenv("MOE_WEIGHTS_MEMORY");
    const std::string value = env == nullptr ? "auto" : env;
    if (std::optional<WeightsMemory> parsed = ParseWeightsMemory(value)) return *parsed;
    std::cerr << "MOE_WEIGHTS_MEMORY=" << value
              << " is not mapped, huge_pages, huge_pages_at_load or auto: using auto\n";
    return *ParseWeightsMemory("auto");
  }();
  return memory;
}

const char* WeightsMemoryName(WeightsMemory memory) {
  switch (memory) {
    case WeightsMemory::kMapped:
      return "mapped";
    case WeightsMemory::kHugePages:
      return "huge_pages";
    case WeightsMemory::kHugePagesAtLoad:
      return "huge_pages_at_load";
  }
  return "unknown";
}

void ReleasePagesInside(const void* data, int64_t bytes) {
  const auto [begin, end] = PagesInside(data, bytes);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

ResidentCopy::~ResidentCopy() {
  if (arena_ != nullptr) munmap(arena_, arena_bytes_);
}

const void* ResidentCopy::Relocate(const void* p) const {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = std::upper_bound(spans_.begin(), spans_.end(), a,
                             [](uintptr_t v, const Span& s) { return v < s.begin; });
  if (it == spans_.begin()) return p;
  --it;
  if (a >= it->end) return p;
  return it->copy + (a - it->begin);
}

std::vector<MemoryRange> MergePageRanges(std::vector<MemoryRange> ranges) {
  const uintptr_t page = PageSize();
  std::vector<std::pair<uintptr_t, uintptr_t>> spans;  // [begin, end), page-aligned
  for (const MemoryRange& r : ranges) {
    if (r.data == nullptr || r.bytes <= 0) continue;
    const uintptr_t begin = reinterpret_cast<uintptr_t>(r.data) & ~(page - 1);
    const uintptr_t end =
        (reinterpret_cast<uintptr_t>(r.data) + static_cast<uintptr_t>(r.bytes) + page - 1) & ~(page - 1);
    spans.emplace_back(begin, end);
  }
  std::sort(spans.begin(), spans.end());
  std::vector<MemoryRange> merged;
  uintptr_t begin = 0, end = 0;
  for (const auto& [b, e] : spans) {
    if (end != 0 && b <= end) {
      end = std::max(end, e);
      continue;
    }
    if (end != 0) merged.push_back({reinterpret_cast<const void*>(begin), static_cast<int64_t>(end - begin)});
    begin = b;
    end = e;
  }
  if (end != 0) merged.push_back({reinterpret_cast<const void*>(begin), static_cast<int64_t>(end - begin)});
  return merged;
}

WarmUpResult WarmUp(std::string_view stage, std::vector<MemoryRange> ranges, const WarmUpOptions& options) {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  // The ranges' exact bytes (what a copy reads), and the page-aligned insides of those to release
  // once copied.
  Spans exact, releasable;
  for (const MemoryRange& r : ranges) {
    if (r.data == nullptr || r.bytes <= 0) continue;
    exact.emplace_back(reinterpret_cast<uintptr_t>(r.data), reinterpret_cast<uintptr_t>(r.data) + r.bytes);
    if (!r.release_after_copy) continue;
    const auto [begin, end] = PagesInside(r.data, r.bytes);
    if (end > begin) releasable.emplace_back(begin, end);
  }
  std::sort(exact.begin(), exact.end());
  std::sort(releasable.begin(), releasable.end());
  const std::vector<MemoryRange> merged = MergePageRanges(std::move(ranges));
  // Chunks never straddle two ranges (a gap between them may not be mapped).
  const int64_t chunk = std::max<int64_t>(options.chunk_bytes, static_cast<int64_t>(PageSize())) &
                        ~static_cast<int64_t>(PageSize() - 1);
  std::vector<MemoryRange> chunks;
  int64_t total = 0;
  for (const MemoryRange& r : merged) {
    const auto* p = static_cast<const uint8_t*>(r.data);
    for (int64_t offset = 0; offset < r.bytes; offset += chunk) {
      chunks.push_back({p + offset, std::min(chunk, r.bytes - offset)});
    }
    total += r.bytes;
  }
  // kHugePages: one arena, each merged range at its original offset within the arena's pages.
  std::vector<ResidentCopy::Span> spans;
  std::vector<uint8_t*> chunk_copy(chunks.size(), nullptr);
  void* arena = nullptr;
  size_t arena_bytes = 0;
  if (options.memory != WeightsMemory::kMapped && total > 0) {
    arena = MapHugePageArena(static_cast<size_t>(total), &arena_bytes);
    if (arena == nullptr) {
      std::cerr << stage << ": no memory for a " << total
                << "-byte huge-page copy; serving from the mapping\n";
    } else {
      auto* next_copy = static_cast<uint8_t*>(arena);
      size_t c = 0;
      for (const MemoryRange& r : merged) {
        const auto begin = reinterpret_cast<uintptr_t>(r.data);
        spans.push_back({begin, begin + static_cast<uintptr_t>(r.bytes), next_copy});
        for (; c < chunks.size() && reinterpret_cast<uintptr_t>(chunks[c].data) < begin + r.bytes; ++c) {
          chunk_copy[c] = next_copy + (reinterpret_cast<uintptr_t>(chunks[c].data) - begin);
        }
        next_copy += r.bytes;
      }
    }
  }
  WarmUpResult result;
  result.bytes = total;
  result.num_threads = static_cast<int>(std::min<size_t>(
      chunks.size(), static_cast<size_t>(options.num_threads > 0 ? options.num_threads : DefaultThreads())));
  std::atomic<size_t> next{0};
  std::atomic<int64_t> done{0};
  std::atomic<bool> all_populate{true};
  std::mutex report_mu;
  Clock::time_point last_report = start;
  auto seconds_since_start = [&start] { return std::chrono::duration<double>(Clock::now() - start).count(); };
  std::atomic<bool> stopped{false};
  auto work = [&] {
    for (size_t i = next.fetch_add(1); i < chunks.size(); i = next.fetch_add(1)) {
      if (options.stop != nullptr && options.stop->load(std::memory_order_relaxed)) {
        stopped.store(true, std::memory_order_relaxed);
        break;
      }
      if (!PopulateChunk(static_cast<const uint8_t*>(chunks[i].data), static_cast<size_t>(chunks[i].bytes),
                         options.populate_read)) {
        all_populate.store(false, std::memory_order_relaxed);
      }
      if (chunk_copy[i] != nullptr) CopyChunk(chunks[i], chunk_copy[i], exact, releasable);
      const int64_t now_done = done.fetch_add(chunks[i].bytes) + chunks[i].bytes;
      if (!options.report_progress) continue;
      std::unique_lock<std::mutex> lock(report_mu, std::try_to_lock);
      if (lock.owns_lock() && now_done < total && Clock::now() - last_report >= std::chrono::seconds(1)) {
        last_report = Clock::now();
        ReportLoadProgress(LoadProgress{.stage = stage,
                                        .unit = LoadProgress::Unit::kByte,
                                        .done = now_done,
                                        .total = total,
                                        .seconds = seconds_since_start()});
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 1; t < result.num_threads; ++t) threads.emplace_back(work);
  work();  // this thread is one of them
  for (std::thread& t : threads) t.join();
  result.seconds = seconds_since_start();
  result.populate = all_populate.load();
  result.stopped = stopped.load();
  if (arena != nullptr) {
    // A stopped copy is incomplete: nothing may point into it.
    auto copy = std::make_shared<ResidentCopy>(arena, arena_bytes, std::move(spans));
    if (!result.stopped) result.copy = std::move(copy);
  }
  if (result.stopped || !options.report_progress) return result;
  ReportLoadProgress(LoadProgress{.stage = stage,
                                  .unit = LoadProgress::Unit::kByte,
                                  .done = total,
                                  .total = total,
                                  .seconds = result.seconds});
  return result;
}

}  // namespace moe::model
