// Progress of slow steps (loading a model, writing one) on stderr. On a terminal one line is
// rewritten in place; elsewhere (--progress into a file or pipe) each update is a line. Updates
// are rate-limited (one per 250 ms on a terminal, one per 2 s otherwise), except the last of each
// stage (done == total), which is always shown.
//
// Thread safety: Update may be called from any thread.
#ifndef MOE_TOOLS_MOECTL_PROGRESS_H_
#define MOE_TOOLS_MOECTL_PROGRESS_H_

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>

#include "CLI/CLI.hpp"

namespace moe::moectl {

class Progress {
 public:
  // Adds --progress to `cmd`: show progress even when stderr is not a terminal.
  void Register(CLI::App* cmd);
  // Decides whether to show anything: --progress, or stderr is a terminal; never when `quiet`
  // (--json). Call after parsing, before the first Update.
  void Enable(const std::string& command, bool quiet);
  // Makes model loading (common/model/load_progress.h) report here while this object lives.
  void ShowModelLoading();
  ~Progress();

  void Update(std::string_view stage, int64_t done, int64_t total, std::string_view detail = {});
  // Ends the terminal's progress line, if one is showing.
  void Finish();

 private:
  std::string command_;
  bool requested_ = false;
  bool enabled_ = false;
  bool terminal_ = false;
  bool line_open_ = false;
  bool sink_installed_ = false;
  std::mutex mu_;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace moe::moectl

#endif  // MOE_TOOLS_MOECTL_PROGRESS_H_
