#include "common/model/weight_warmup.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
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

int DefaultThreads() {
  const int hw = static_cast<int>(std::thread::hardware_concurrency());
  return std::clamp(hw, 4, 16);
}

}  // namespace

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
  auto work = [&] {
    for (size_t i = next.fetch_add(1); i < chunks.size(); i = next.fetch_add(1)) {
      if (!PopulateChunk(static_cast<const uint8_t*>(chunks[i].data), static_cast<size_t>(chunks[i].bytes),
                         options.populate_read)) {
        all_populate.store(false, std::memory_order_relaxed);
      }
      const int64_t now_done = done.fetch_add(chunks[i].bytes) + chunks[i].bytes;
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
  ReportLoadProgress(LoadProgress{.stage = stage,
                                  .unit = LoadProgress::Unit::kByte,
                                  .done = total,
                                  .total = total,
                                  .seconds = result.seconds});
  return result;
}

}  // namespace moe::model
