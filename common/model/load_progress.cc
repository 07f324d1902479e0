#include "common/model/load_progress.h"

#include <mutex>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moe::model {
namespace {

std::mutex& SinkMutex() {
  static std::mutex mu;
  return mu;
}

LoadProgressSink& Sink() {
  static LoadProgressSink sink;
  return sink;
}

}  // namespace

void SetLoadProgressSink(LoadProgressSink sink) {
  std::lock_guard<std::mutex> lock(SinkMutex());
  Sink() = std::move(sink);
}

void ReportLoadProgress(const LoadProgress& progress) {
  std::lock_guard<std::mutex> lock(SinkMutex());
  if (Sink()) Sink()(progress);
}

void ReportLoadProgress(std::string_view stage, int64_t done, int64_t total) {
  ReportLoadProgress(
      LoadProgress{.stage = stage, .unit = LoadProgress::Unit::kLayer, .done = done, .total = total});
}

std::string FormatLoadProgress(const LoadProgress& progress) {
  if (progress.unit == LoadProgress::Unit::kLayer) {
    return absl::StrCat(std::string(progress.stage), ": layer ", progress.done, " of ", progress.total);
  }
  constexpr double kGiB = 1 << 30;
  const double percent = progress.total > 0 ? 100.0 * progress.done / progress.total : 100.0;
  const double rate = progress.seconds > 0 ? progress.done / progress.seconds / 1e9 : 0.0;
  return absl::StrFormat("%s: %.2f of %.2f GiB (%.0f%%) in %.1f s, %.2f GB/s", std::string(progress.stage),
                         progress.done / kGiB, progress.total / kGiB, percent, progress.seconds, rate);
}

}  // namespace moe::model
