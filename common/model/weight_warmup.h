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
// Thread safety: WarmUp may run concurrently with itself; it starts and joins its own threads.
#ifndef MOE_COMMON_MODEL_WEIGHT_WARMUP_H_
#define MOE_COMMON_MODEL_WEIGHT_WARMUP_H_

#include <cstdint>
#include <string_view>
#include <vector>

namespace moe::model {

struct MemoryRange {
  const void* data = nullptr;
  int64_t bytes = 0;
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
};

struct WarmUpResult {
  int64_t bytes = 0;      // bytes of the merged, page-aligned ranges
  double seconds = 0;     // wall time
  int num_threads = 0;    // threads used
  bool populate = false;  // every chunk took MADV_POPULATE_READ (else some took the touch loop)
  double BytesPerSecond() const { return seconds > 0 ? static_cast<double>(bytes) / seconds : 0; }
};

// Faults every page of `ranges` in; reports progress under `stage`. Null or empty ranges are
// skipped. Never fails: a page that cannot be read would fault the same way when first used.
WarmUpResult WarmUp(std::string_view stage, std::vector<MemoryRange> ranges,
                    const WarmUpOptions& options = {});

// The page-aligned, sorted union of `ranges` (what WarmUp reads); exposed for tests.
std::vector<MemoryRange> MergePageRanges(std::vector<MemoryRange> ranges);

}  // namespace moe::model

#endif  // MOE_COMMON_MODEL_WEIGHT_WARMUP_H_
