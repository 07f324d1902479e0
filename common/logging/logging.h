// Logging of the service processes, with glog: `LOG(INFO) << ...`, `LOG(WARNING)`, `LOG(ERROR)`,
// and `VLOG(1)` for debug detail. Every line goes to stderr (the container log) with its UTC time,
// level, program, thread id and source line:
//
//   2026-12-01T17:18:54.795949Z INFO moe-router 9569 main.cc:14] serving tiny on port 50051
//
// The engine core does not log through this (it builds without glog).
#ifndef MOE_COMMON_LOGGING_LOGGING_H_
#define MOE_COMMON_LOGGING_LOGGING_H_

#include <string_view>

#include "absl/status/statusor.h"
#include "glog/logging.h"  // IWYU pragma: export

namespace moe::logging {

// The minimum level of the lines written. kDebug also writes VLOG(1) lines.
enum class LogLevel { kDebug, kInfo, kWarning, kError };

// "debug", "info", "warning" or "error" (as --log_level and MOE_LOG_LEVEL take them).
// INVALID_ARGUMENT naming --log_level otherwise.
absl::StatusOr<LogLevel> ParseLogLevel(std::string_view name);

// Initializes glog for this process: stderr only (no log files), the line prefix above with the
// base name of `argv0`, lines below `level` dropped. Call once, from main, before any thread logs.
void InitLogging(const char* argv0, LogLevel level);

// Changes the minimum level at any time (glog reads it per line).
void SetLogLevel(LogLevel level);

}  // namespace moe::logging

#endif  // MOE_COMMON_LOGGING_LOGGING_H_
