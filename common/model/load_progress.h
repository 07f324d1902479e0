// Progress of loading a model's weights, for tools that want to show it (moectl prints it on
// stderr; the services log it). Loading reports each layer it has resolved, then the bytes it has
// read in (weight_warmup.h) with the time spent so far, so a sink can show a rate; the sink decides
// how often to show anything.
//
// Thread safety: SetLoadProgressSink and ReportLoadProgress may be called from any thread; calls of
// the sink are serialized.
#ifndef MOE_COMMON_MODEL_LOAD_PROGRESS_H_
#define MOE_COMMON_MODEL_LOAD_PROGRESS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace moe::model {

struct LoadProgress {
  enum class Unit { kLayer, kByte };
  // Names the work: "resolving dense weights", "reading experts 0-31".
  std::string_view stage;
  Unit unit = Unit::kLayer;
  // `done` of `total` units of the stage are finished.
  int64_t done = 0;
  int64_t total = 0;
  // Seconds since the stage began (kByte stages; 0 otherwise): done / seconds is the read rate.
  double seconds = 0;
};

using LoadProgressSink = std::function<void(const LoadProgress& progress)>;

// Replaces the process-wide sink (an empty function: none, the default).
void SetLoadProgressSink(LoadProgressSink sink);

// Calls the sink, if any.
void ReportLoadProgress(const LoadProgress& progress);
// A layer-counting stage: `done` of `total` layers.
void ReportLoadProgress(std::string_view stage, int64_t done, int64_t total);

// One line for a log: "reading experts 0-31: 1.25 of 5.91 GiB (21%) in 0.9 s, 1.49 GB/s" (kByte),
// "resolving dense weights: layer 3 of 48" (kLayer).
std::string FormatLoadProgress(const LoadProgress& progress);

}  // namespace moe::model

#endif  // MOE_COMMON_MODEL_LOAD_PROGRESS_H_
