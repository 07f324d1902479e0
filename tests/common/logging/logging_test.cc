// The service log format (time and level on every line) and --log_level's minimum level.
#include "common/logging/logging.h"

#include <regex>
#include <string>

#include "gtest/gtest.h"

namespace moe::logging {
namespace {

// glog is initialized once per process.
void InitOnce() {
  static const bool initialized = [] {
    InitLogging("/some/dir/moe-test-binary", LogLevel::kInfo);
    return true;
  }();
  (void)initialized;
}

std::string Logged(LogLevel level, void (*log)()) {
  InitOnce();
  SetLogLevel(level);
  ::testing::internal::CaptureStderr();
  log();
  return ::testing::internal::GetCapturedStderr();
}

TEST(LoggingTest, ParsesTheFourLevelNames) {
  EXPECT_EQ(*ParseLogLevel("debug"), LogLevel::kDebug);
  EXPECT_EQ(*ParseLogLevel("info"), LogLevel::kInfo);
  EXPECT_EQ(*ParseLogLevel("warning"), LogLevel::kWarning);
  EXPECT_EQ(*ParseLogLevel("error"), LogLevel::kError);
}

TEST(LoggingTest, RejectsAnUnknownLevelNamingTheFlag) {
  auto level = ParseLogLevel("verbose");
  ASSERT_FALSE(level.ok());
  EXPECT_EQ(level.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(level.status().message(), "--log_level: 'verbose' is not one of debug, info, warning, error");
}

TEST(LoggingTest, EveryLineStartsWithUtcTimeLevelProgramThreadAndSource) {
  const std::string out = Logged(LogLevel::kInfo, [] { LOG(WARNING) << "disk is slow"; });
  const std::regex line(
      R"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z WARNING moe-test-binary \d+ logging_test\.cc:\d+\] disk is slow\n)");
  EXPECT_TRUE(std::regex_match(out, line)) << out;
}

TEST(LoggingTest, ErrorLevelDropsInfoAndWarningLines) {
  const std::string out = Logged(LogLevel::kError, [] {
    LOG(INFO) << "an info line";
    LOG(WARNING) << "a warning line";
    LOG(ERROR) << "an error line";
  });
  EXPECT_EQ(out.find("an info line"), std::string::npos) << out;
  EXPECT_EQ(out.find("a warning line"), std::string::npos) << out;
  EXPECT_NE(out.find("ERROR moe-test-binary"), std::string::npos) << out;
  EXPECT_NE(out.find("an error line"), std::string::npos) << out;
}

TEST(LoggingTest, InfoLevelWritesInfoButNotDebugLines) {
  const std::string out = Logged(LogLevel::kInfo, [] {
    VLOG(1) << "a debug line";
    LOG(INFO) << "an info line";
  });
  EXPECT_EQ(out.find("a debug line"), std::string::npos) << out;
  EXPECT_NE(out.find("INFO moe-test-binary"), std::string::npos) << out;
  EXPECT_NE(out.find("an info line"), std::string::npos) << out;
}

TEST(LoggingTest, DebugLevelWritesDebugLines) {
  const std::string out = Logged(LogLevel::kDebug, [] { VLOG(1) << "a debug line"; });
  EXPECT_NE(out.find("a debug line"), std::string::npos) << out;
}

}  // namespace
}  // namespace moe::logging
