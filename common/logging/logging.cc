#include "common/logging/logging.h"

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"

namespace moe::logging {
namespace {

// "2026-12-01T17:18:54.795949Z INFO moe-router 9569 main.cc:14] ": ISO 8601 UTC time first, so
// lines of several processes sort by time; the program, since a local cluster's logs interleave.
void WritePrefix(std::ostream& out, const google::LogMessageInfo& line, void* program) {
  const google::LogMessageTime& t = line.time;
  char time[64];  // room for any int the format could be given (-Wformat-truncation)
  std::snprintf(time, sizeof(time), "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", t.year() + 1900, t.month() + 1,
                t.day(), t.hour(), t.min(), t.sec(), static_cast<int>(t.usec()));
  out << time << ' ' << line.severity << ' ' << *static_cast<const std::string*>(program) << ' '
      << line.thread_id << ' ' << line.filename << ':' << line.line_number << ']';
}

}  // namespace

absl::StatusOr<LogLevel> ParseLogLevel(std::string_view name) {
  if (name == "debug") return LogLevel::kDebug;
  if (name == "info") return LogLevel::kInfo;
  if (name == "warning") return LogLevel::kWarning;
  if (name == "error") return LogLevel::kError;
  return absl::InvalidArgumentError(
      absl::StrCat("--log_level: '", std::string(name), "' is not one of debug, info, warning, error"));
}

void SetLogLevel(LogLevel level) {
  // glog has no debug severity: debug is INFO plus verbose level 1 (VLOG(1)).
  switch (level) {
    case LogLevel::kDebug:
      FLAGS_minloglevel = google::GLOG_INFO;
      FLAGS_v = 1;
      break;
    case LogLevel::kInfo:
      FLAGS_minloglevel = google::GLOG_INFO;
      FLAGS_v = 0;
      break;
    case LogLevel::kWarning:
      FLAGS_minloglevel = google::GLOG_WARNING;
      FLAGS_v = 0;
      break;
    case LogLevel::kError:
      FLAGS_minloglevel = google::GLOG_ERROR;
      FLAGS_v = 0;
      break;
  }
}

void InitLogging(const char* argv0, LogLevel level) {
  // Containers collect stderr; files under /tmp would fill a read-only or small root filesystem.
  FLAGS_logtostderr = true;
  FLAGS_colorlogtostderr = false;
  FLAGS_log_utc_time = true;
  SetLogLevel(level);
  std::string name(argv0);
  if (const size_t slash = name.rfind('/'); slash != std::string::npos) name.erase(0, slash + 1);
  static const std::string* program = new std::string(std::move(name));
  google::InitGoogleLogging(argv0, &WritePrefix, const_cast<std::string*>(program));
}

}  // namespace moe::logging
