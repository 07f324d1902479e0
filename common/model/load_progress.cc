#include "common/model/load_progress.h"

#include <mutex>
#include <utility>

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

void ReportLoadProgress(std::string_view stage, int64_t done, int64_t total) {
  std::lock_guard<std::mutex> lock(SinkMutex());
  if (Sink()) Sink()(stage, done, total);
}

}  // namespace moe::model
