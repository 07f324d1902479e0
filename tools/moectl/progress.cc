#include "tools/moectl/progress.h"

#include <unistd.h>

#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/model/load_progress.h"

namespace moe::moectl {

void Progress::Register(CLI::App* cmd) {
  cmd->add_flag("--progress", requested_,
                "Show progress on stderr even when it is not a terminal (never with --json)");
}

void Progress::Enable(const std::string& command, bool quiet) {
  command_ = command;
  terminal_ = isatty(STDERR_FILENO) == 1;
  enabled_ = !quiet && (requested_ || terminal_);
}

void Progress::ShowModelLoading() {
  if (!enabled_) return;
  model::SetLoadProgressSink([this](const model::LoadProgress& p) {
    if (p.unit == model::LoadProgress::Unit::kLayer) {
      Update(std::string(p.stage) + ": layer", p.done, p.total);
    } else {
      const double rate = p.seconds > 0 ? static_cast<double>(p.done) / p.seconds / 1e9 : 0.0;
      auto mib = [](int64_t bytes) { return (bytes + (int64_t{1} << 20) - 1) >> 20; };  // rounded up
      Update(std::string(p.stage) + ": MiB", mib(p.done), mib(p.total), absl::StrFormat("%.2f GB/s", rate));
    }
  });
  sink_installed_ = true;
}

Progress::~Progress() {
  if (sink_installed_) model::SetLoadProgressSink(nullptr);
  Finish();
}

void Progress::Update(std::string_view stage, int64_t done, int64_t total, std::string_view detail) {
  if (!enabled_) return;
  std::lock_guard<std::mutex> lock(mu_);
  const auto now = std::chrono::steady_clock::now();
  const auto interval = terminal_ ? std::chrono::milliseconds(250) : std::chrono::milliseconds(2000);
  if (done < total && now - last_ < interval) return;
  last_ = now;
  std::string text = absl::StrCat("moectl ", command_, ": ", std::string(stage), " ", done, "/", total);
  if (!detail.empty()) absl::StrAppend(&text, ", ", std::string(detail));
  if (terminal_) {
    std::cerr << "\r" << text << "\033[K" << std::flush;  // rewrite the line, clear its old tail
    line_open_ = true;
  } else {
    std::cerr << text << std::endl;
  }
}

void Progress::Finish() {
  std::lock_guard<std::mutex> lock(mu_);
  if (line_open_) std::cerr << std::endl;
  line_open_ = false;
}

}  // namespace moe::moectl
