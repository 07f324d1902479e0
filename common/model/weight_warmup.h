// Warm-up of mmapped weights: brings every page a worker will read into memory and into its page
// tables before it serves, so no request waits on the disk (or on a page fault per 4 KiB) the first
// time it touches a cold expert. The ranges are page-aligned, sorted and merged (tied embeddings,
// adjacent experts), cut into chunks, and several threads fault the chunks in, so a cold file is
// read with many requests in flight and a warm page cache is mapped at memory speed.
//
// Each chunk is populated with madvise(MADV_POPULATE_READ) (Linux >= 5.14: one call maps the whole
// chunk, reading what is missing); on older kernels with MADV_WILLNEED readahead and one read per
// page. Progress goes to the load-progress sink (load_progress.h) in bytes, at most about once a
// second and once at the end (docs/operations.md#loading-the-weights).
//
// With WeightsMemory::kHugePages the chunks are also copied into one anonymous arena backed by
// transparent huge pages, and the caller points its views at the copy (ResidentCopy::Relocate).
// Weights are streamed at every decode step; on a VM whose page tables are shadowed by the
// hypervisor, streaming a multi-GiB file mapping through 4 KiB pages ran at a fifth of the speed
// of the same bytes in huge pages (docs/operations.md#loading-the-weights).
//
// Thread safety: WarmUp may run concurrently with itself; it starts and joins its own threads.
// ResidentCopy is immutable once made.
#ifndef MOE_COMMON_MODEL_WEIGHT_WARMUP_H_
#define MOE_COMMON_MODEL_WEIGHT_WARMUP_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

namespace moe::model {

struct MemoryRange {
  const void* data = nullptr;
  int64_t bytes = 0;
  // kHugePages: once copied, the pages wholly inside this range leave the process's page tables
  // (madvise(MADV_DONTNEED); for a file mapping they stay in the page cache). Only for ranges that
  // nothing reads through the original address any more and whose pages hold nothing else.
  bool release_after_copy = false;
};

// Where a worker keeps the weights it serves.
enum class WeightsMemory {
  kMapped,  // views of the checkpoint's mapping, its pages faulted in
  // A copy in anonymous memory backed by transparent huge pages, made while the worker already
  // serves from the mapping; the views switch over once it is complete (HugePageSwitch, weights.h).
  kHugePages,
  // The same copy, made before the worker serves (a benchmark's steady state from the first step).
  kHugePagesAtLoad,
};

// MOE_WEIGHTS_MEMORY: `mapped`, `huge_pages` or `huge_pages_at_load`; unset, `auto` or anything
// else (logged once): huge_pages where transparent huge pages are enabled (`always` or `madvise` in
// /sys/kernel/mm/transparent_hugepage/enabled), else mapped (an arena of 4 KiB pages would cost a
// page fault per 4 KiB to fill and gain nothing over the mapping).
WeightsMemory WeightsMemoryFromEnv();
// One of the names above, or `auto` (what the machine supports, as for the variable unset);
// nullopt for anything else.
std::optional<WeightsMemory> ParseWeightsMemory(std::string_view name);
const char* WeightsMemoryName(WeightsMemory memory);

// Drops from this process's page tables the pages wholly inside [data, data + bytes)
// (madvise(MADV_DONTNEED)); pages it shares with neighbours stay. Only for memory nothing will
// write: a read-only private file mapping keeps its pages in the page cache, and a later read
// faults them back in.
void ReleasePagesInside(const void* data, int64_t bytes);

// The copies WarmUp made with kHugePages: one arena holding each merged, page-aligned range at the
// same offset within its page as the original, so alignment is kept. Only the ranges' own bytes are
// copied; the rest of their first and last pages is zero in the copy.
class ResidentCopy {
 public:
  struct Span {
    uintptr_t begin = 0, end = 0;  // the original range, page-aligned
    uint8_t* copy = nullptr;       // its copy
  };
  // Takes the arena (munmapped at destruction); `spans` sorted by begin and disjoint.
  ResidentCopy(void* arena, size_t arena_bytes, std::vector<Span> spans)
      : spans_(std::move(spans)), arena_(arena), arena_bytes_(arena_bytes) {}
  ResidentCopy(const ResidentCopy&) = delete;
  ResidentCopy& operator=(const ResidentCopy&) = delete;
  ~ResidentCopy();

  // Where the copy of the byte at `p` lives; `p` itself when no copied range holds it.
  const void* Relocate(const void* p) const;
  template <typename T>
  const T* Relocate(const T* p) const {
    return static_cast<const T*>(Relocate(static_cast<const void*>(p)));
  }
  int64_t bytes() const { return static_cast<int64_t>(arena_bytes_); }

 private:
  std::vector<Span> spans_;  // sorted by begin, disjoint
  void* arena_ = nullptr;
  size_t arena_bytes_ = 0;
};

struct WarmUpOptions {
  // Threads faulting chunks in; 0: the machine's hardware threads, at least 4 and at most 16 (a
  // cold read wants requests in flight even on a small machine).
  int num_threads = 0;
  // Work unit of one thread; also how often progress can move.
  int64_t chunk_bytes = int64_t{64} << 20;
  // false: MADV_WILLNEED readahead and one read per page for every chunk (what kernels before 5.14
  // get; tests use it to cover that path).
  bool populate_read = true;
  // kHugePages and kHugePagesAtLoad both copy (WarmUp itself is always synchronous).
  WeightsMemory memory = WeightsMemory::kMapped;
  // Read before each chunk: once true, the remaining chunks are skipped and no copy is returned
  // (a background copy whose owner is going away).
  const std::atomic<bool>* stop = nullptr;
  // false: no load-progress reports.
  bool report_progress = true;
};

struct WarmUpResult {
  int64_t bytes = 0;      // bytes of the merged, page-aligned ranges
  double seconds = 0;     // wall time
  int num_threads = 0;    // threads used
  bool populate = false;  // every chunk took MADV_POPULATE_READ (else some took the touch loop)
  bool stopped = false;   // options.stop was set before every chunk was done
  // kHugePages: the copy the caller's views must be relocated into (null with kMapped, or when the
  // arena could not be allocated: then the ranges were warmed up in place, as with kMapped).
  std::shared_ptr<const ResidentCopy> copy;
  double BytesPerSecond() const { return seconds > 0 ? static_cast<double>(bytes) / seconds : 0; }
};

// Faults every page of `ranges` in (and with kHugePages copies them); reports progress under
// `stage`. Null or empty ranges are skipped. Never fails: a page that cannot be read would fault the
// same way when first used.
WarmUpResult WarmUp(std::string_view stage, std::vector<MemoryRange> ranges,
                    const WarmUpOptions& options = {});

// The page-aligned, sorted union of `ranges` (what WarmUp reads); exposed for tests.
std::vector<MemoryRange> MergePageRanges(std::vector<MemoryRange> ranges);

}  // namespace moe::model

#endif  // MOE_COMMON_MODEL_WEIGHT_WARMUP_H_
