// Progress of loading a model's weights, for tools that want to show it (moectl prints it on
// stderr; the services leave it unset). Loading reports each layer it has resolved and each layer
// it has read in; the sink decides how often to show anything.
//
// Thread safety: SetLoadProgressSink and ReportLoadProgress may be called from any thread; calls of
// the sink are serialized.
#ifndef MOE_COMMON_MODEL_LOAD_PROGRESS_H_
#define MOE_COMMON_MODEL_LOAD_PROGRESS_H_

#include <cstdint>
#include <functional>
#include <string_view>

namespace moe::model {

// `stage` names the work ("resolving dense weights", "reading experts 0-31"), `done` of `total` units
// (layers) of it are finished.
using LoadProgressSink = std::function<void(std::string_view stage, int64_t done, int64_t total)>;

// Replaces the process-wide sink (an empty function: none, the default).
void SetLoadProgressSink(LoadProgressSink sink);

// Calls the sink, if any.
void ReportLoadProgress(std::string_view stage, int64_t done, int64_t total);

}  // namespace moe::model

#endif  // MOE_COMMON_MODEL_LOAD_PROGRESS_H_
