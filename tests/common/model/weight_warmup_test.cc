#include "common/model/weight_warmup.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/model/load_progress.h"
#include "gtest/gtest.h"
#include "tests/common/model/test_util.h"

namespace moe::model {
namespace {

const int64_t kPage = sysconf(_SC_PAGESIZE);

// The resident set (Rss, bytes) of this process's mapping that starts at `begin`: pages in its
// page tables, which is what a warm-up must leave behind (a page that is only in the page cache
// still costs a fault on first use).
int64_t MappingRssBytes(const void* begin) {
  std::ifstream smaps("/proc/self/smaps");
  char prefix[32];
  std::snprintf(prefix, sizeof(prefix), "%lx-", reinterpret_cast<unsigned long>(begin));
  bool in_mapping = false;
  for (std::string line; std::getline(smaps, line);) {
    if (line.rfind(prefix, 0) == 0) in_mapping = true;
    if (in_mapping && line.rfind("Rss:", 0) == 0) {
      std::istringstream fields(line.substr(4));
      int64_t kib = 0;
      fields >> kib;
      return kib * 1024;
    }
  }
  return -1;
}

// A file of `pages` pages mapped read-only and private, as SafetensorsFile maps a checkpoint.
class MappedFile {
 public:
  MappedFile(const testing::TempDir& dir, int64_t pages) : bytes_(pages * kPage) {
    const std::string path = dir.File("weights.bin");
    {
      std::ofstream out(path, std::ios::binary);
      std::vector<char> page(static_cast<size_t>(kPage));
      for (int64_t p = 0; p < pages; ++p) {
        page[0] = static_cast<char>(p);
        out.write(page.data(), kPage);
      }
    }
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_GE(fd, 0);
    data_ = static_cast<const uint8_t*>(
        mmap(nullptr, static_cast<size_t>(bytes_), PROT_READ, MAP_PRIVATE, fd, 0));
    close(fd);
    EXPECT_NE(data_, MAP_FAILED);
  }
  ~MappedFile() { munmap(const_cast<uint8_t*>(data_), static_cast<size_t>(bytes_)); }
  const uint8_t* data() const { return data_; }
  int64_t bytes() const { return bytes_; }

 private:
  int64_t bytes_;
  const uint8_t* data_ = nullptr;
};

TEST(WeightWarmupTest, MergePageRangesAlignsSortsAndMergesOverlapsAndNeighbours) {
  alignas(4096) static uint8_t arena[16 * 4096];
  if (kPage != 4096) GTEST_SKIP() << "the arena assumes 4 KiB pages";
  const std::vector<MemoryRange> merged = MergePageRanges({
      {arena + 9 * kPage + 10, 100},   // inside page 9
      {arena + 100, 2 * kPage},        // pages 0-2 (unaligned at both ends)
      {arena + 3 * kPage, kPage},      // page 3: adjacent to the one above, merged
      {nullptr, 4096},                 // skipped
      {arena + 9 * kPage, 0},          // empty: skipped
      {arena + 9 * kPage, 2 * kPage},  // pages 9-10, overlapping the first
  });
  ASSERT_EQ(merged.size(), 2u);
  EXPECT_EQ(merged[0].data, arena);
  EXPECT_EQ(merged[0].bytes, 4 * kPage);
  EXPECT_EQ(merged[1].data, arena + 9 * kPage);
  EXPECT_EQ(merged[1].bytes, 2 * kPage);
}

class WeightWarmupPathTest : public ::testing::TestWithParam<bool> {};

TEST_P(WeightWarmupPathTest, MapsEveryPageOfTheRangesIntoThePageTables) {
  testing::TempDir dir;
  MappedFile file(dir, 64);
  ASSERT_EQ(MappingRssBytes(file.data()), 0) << "nothing touched yet";
  // Two ranges with a gap of 8 pages; several chunks per range, 3 threads.
  const WarmUpResult result =
      WarmUp("test", {{file.data(), 20 * kPage}, {file.data() + 28 * kPage, 36 * kPage}},
             WarmUpOptions{.num_threads = 3, .chunk_bytes = 4 * kPage, .populate_read = GetParam()});
  EXPECT_EQ(result.bytes, 56 * kPage);
  EXPECT_EQ(result.num_threads, 3);
  EXPECT_GE(result.seconds, 0);
  // At least every page of the ranges (the kernel's fault-around may map the gap's pages too).
  EXPECT_GE(MappingRssBytes(file.data()), 56 * kPage);
  EXPECT_EQ(result.populate, GetParam());
  EXPECT_EQ(result.copy, nullptr) << "kMapped serves from the mapping";
}

INSTANTIATE_TEST_SUITE_P(PopulateReadOrTouchLoop, WeightWarmupPathTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "PopulateRead" : "TouchLoop";
                         });

TEST(WeightWarmupTest, HugePagesCopyEachRangeAtItsPageOffsetAndReleaseOnlyTheMarkedSources) {
  testing::TempDir dir;
  MappedFile file(dir, 256);
  const uint8_t* base = file.data();
  // A: pages 0-199 but unaligned at both ends, released once copied; B: pages 220-235, kept (as
  // an owned conversion would be); the rest is not asked for.
  const MemoryRange a{base + 100, 200 * kPage - 300, /*release_after_copy=*/true};
  const MemoryRange b{base + 220 * kPage, 16 * kPage, /*release_after_copy=*/false};
  const WarmUpResult result =
      WarmUp("test", {a, b},
             WarmUpOptions{.num_threads = 3, .chunk_bytes = 64 * kPage, .memory = WeightsMemory::kHugePages});
  ASSERT_NE(result.copy, nullptr);
  const ResidentCopy& copy = *result.copy;
  EXPECT_EQ(copy.bytes() % (2 << 20), 0) << "whole huge pages";
  EXPECT_GE(copy.bytes(), 216 * kPage);
  // A's 198 whole pages left the page tables (but for what fault-around mapped back while the next
  // chunk was read: at most 15 pages per chunk); B's 16 pages stayed. (Checked first: reading the
  // source below faults it back in.)
  const int64_t rss = MappingRssBytes(base);
  EXPECT_GE(rss, 16 * kPage);
  EXPECT_LE(rss, (256 - 198 + 4 * 15) * kPage);
  for (const MemoryRange& r : {a, b}) {
    const auto* original = static_cast<const uint8_t*>(r.data);
    const uint8_t* moved = copy.Relocate(original);
    ASSERT_NE(moved, original);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(moved) % kPage, reinterpret_cast<uintptr_t>(original) % kPage);
    EXPECT_EQ(copy.Relocate(original + r.bytes - 1), moved + r.bytes - 1);
    EXPECT_EQ(std::memcmp(moved, original, static_cast<size_t>(r.bytes)), 0);
  }
  for (int64_t page : {1, 150, 199, 220, 235}) {
    EXPECT_EQ(*copy.Relocate(base + page * kPage), static_cast<uint8_t>(page)) << "page " << page;
  }
  // Outside every range: unchanged.
  EXPECT_EQ(copy.Relocate(base + 210 * kPage), base + 210 * kPage);
  EXPECT_EQ(copy.Relocate(base + 255 * kPage), base + 255 * kPage);
  EXPECT_EQ(copy.Relocate(base - 1), base - 1);
  // The source is intact: released file pages fault back in from the page cache.
  EXPECT_EQ(base[5 * kPage], 5);
}

TEST(WeightWarmupTest, WeightsMemoryNamesAndEnvironmentChoice) {
  for (const WeightsMemory m :
       {WeightsMemory::kMapped, WeightsMemory::kHugePages, WeightsMemory::kHugePagesAtLoad}) {
    EXPECT_EQ(ParseWeightsMemory(WeightsMemoryName(m)), m) << WeightsMemoryName(m);
  }
  EXPECT_STREQ(WeightsMemoryName(WeightsMemory::kHugePagesAtLoad), "huge_pages_at_load");
  // auto is what the machine supports, never the copy before serving.
  ASSERT_TRUE(ParseWeightsMemory("auto").has_value());
  EXPECT_NE(ParseWeightsMemory("auto"), WeightsMemory::kHugePagesAtLoad);
  EXPECT_EQ(ParseWeightsMemory("hugepages"), std::nullopt);
  EXPECT_EQ(ParseWeightsMemory(""), std::nullopt);
  // Whatever MOE_WEIGHTS_MEMORY says, the choice is stable.
  EXPECT_EQ(WeightsMemoryFromEnv(), WeightsMemoryFromEnv());
}

// A copy whose owner goes away stops: set before it starts, nothing is copied, nothing is
// returned to point into, and no progress is reported as if it had finished.
TEST(WeightWarmupTest, StopSkipsTheRemainingChunksAndReturnsNoCopy) {
  testing::TempDir dir;
  MappedFile file(dir, 64);
  std::vector<LoadProgress> reports;
  SetLoadProgressSink([&reports](const LoadProgress& p) { reports.push_back(p); });
  const std::atomic<bool> stop{true};
  const WarmUpResult stopped = WarmUp(
      "test", {{file.data(), file.bytes()}},
      WarmUpOptions{
          .num_threads = 2, .chunk_bytes = 4 * kPage, .memory = WeightsMemory::kHugePages, .stop = &stop});
  EXPECT_TRUE(stopped.stopped);
  EXPECT_EQ(stopped.copy, nullptr);
  const std::atomic<bool> go{false};
  const WarmUpResult quiet = WarmUp("test", {{file.data(), file.bytes()}},
                                    WarmUpOptions{.num_threads = 2,
                                                  .chunk_bytes = 4 * kPage,
                                                  .memory = WeightsMemory::kHugePagesAtLoad,
                                                  .stop = &go,
                                                  .report_progress = false});
  SetLoadProgressSink(nullptr);
  EXPECT_TRUE(reports.empty()) << reports.size() << " reports, the first: " << FormatLoadProgress(reports[0]);
  EXPECT_FALSE(quiet.stopped);
  ASSERT_NE(quiet.copy, nullptr) << "huge_pages_at_load copies like huge_pages";
  EXPECT_EQ(*quiet.copy->Relocate(file.data() + 9 * kPage), 9);
}

// Only the whole pages inside a range leave the page tables; its edge pages stay.
TEST(WeightWarmupTest, ReleasePagesInsideKeepsTheEdgePages) {
  testing::TempDir dir;
  MappedFile file(dir, 32);
  const uint8_t* base = file.data();
  WarmUp("test", {{base, file.bytes()}}, WarmUpOptions{.num_threads = 1, .report_progress = false});
  const int64_t before = MappingRssBytes(base);
  ASSERT_GE(before, 32 * kPage);
  ReleasePagesInside(base + 100, 20 * kPage);  // pages 1-19 are inside; 0 and 20 are edges
  const int64_t after = MappingRssBytes(base);
  EXPECT_EQ(before - after, 19 * kPage);
  EXPECT_EQ(base[7 * kPage], 7) << "a released page faults back in from the page cache";
}

TEST(WeightWarmupTest, ReportsBytesUpToTheTotalAndEndsWithTheTotal) {
  testing::TempDir dir;
  MappedFile file(dir, 32);
  std::vector<LoadProgress> reports;
  SetLoadProgressSink([&reports](const LoadProgress& p) { reports.push_back(p); });
  const WarmUpResult result = WarmUp("reading test weights", {{file.data(), file.bytes()}},
                                     WarmUpOptions{.num_threads = 2, .chunk_bytes = kPage});
  SetLoadProgressSink(nullptr);
  ASSERT_FALSE(reports.empty());
  int64_t previous = 0;
  for (const LoadProgress& p : reports) {
    EXPECT_EQ(p.unit, LoadProgress::Unit::kByte);
    EXPECT_EQ(p.total, 32 * kPage);
    EXPECT_GE(p.done, previous);
    previous = p.done;
  }
  EXPECT_EQ(reports.back().done, 32 * kPage);
  EXPECT_EQ(reports.back().seconds, result.seconds);
  EXPECT_EQ(std::string(reports.back().stage), "reading test weights");
}

TEST(WeightWarmupTest, NothingToReadIsNoError) {
  const WarmUpResult result = WarmUp("empty", {{nullptr, 100}, {nullptr, 0}});
  EXPECT_EQ(result.bytes, 0);
  EXPECT_EQ(result.num_threads, 0);
}

TEST(WeightWarmupTest, FormatsByteProgressWithItsRate) {
  EXPECT_EQ(FormatLoadProgress(LoadProgress{.stage = "reading experts 0-31",
                                            .unit = LoadProgress::Unit::kByte,
                                            .done = int64_t{1} << 30,
                                            .total = int64_t{4} << 30,
                                            .seconds = 2.0}),
            "reading experts 0-31: 1.00 of 4.00 GiB (25%) in 2.0 s, 0.54 GB/s");
  EXPECT_EQ(FormatLoadProgress(LoadProgress{.stage = "resolving dense weights", .done = 3, .total = 48}),
            "resolving dense weights: layer 3 of 48");
}

}  // namespace
}  // namespace moe::model
