// moectl logits --model DIR --ids 1,2,3 [--top N]: the last position's logits (float32) computed by
// the embedded engine, as JSON on stdout.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"
#include "tools/moectl/commands.h"
#include "tools/moectl/engine_options.h"
#include "tools/moectl/progress.h"

namespace moe::moectl {
namespace {

struct LogitsFlags {
  EngineFlags engine;
  Progress progress;
  std::string ids;
  int top = 0;
};

std::vector<int32_t> ParseIds(const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int64_t id;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &id) || id < 0 || id > INT32_MAX) {
      Fail("logits", "--ids: '" + std::string(part) + "' is not a non-negative token id");
    }
    ids.push_back(static_cast<int32_t>(id));
  }
  if (ids.empty()) Fail("logits", "--ids: must list at least one token id");
  return ids;
}

void Run(LogitsFlags& flags) {
  const std::vector<int32_t> ids = ParseIds(flags.ids);
  auto options = flags.engine.ToOptions();
  if (!options.ok()) Fail("logits", options.status().ToString());
  flags.progress.Enable("logits", /*quiet=*/false);
  flags.progress.ShowModelLoading();
  auto engine = engine::Engine::CreateEmbedded(flags.engine.model_dir, *options, flags.engine.expert_shards);
  flags.progress.Finish();
  if (!engine.ok()) Fail("logits", engine.status().ToString());
  auto logits = (*engine)->PromptLogits(ids);
  if (!logits.ok()) Fail("logits", logits.status().ToString());

  nlohmann::ordered_json out;
  out["num_tokens"] = ids.size();
  out["vocab_size"] = logits->size();
  const auto argmax = std::max_element(logits->begin(), logits->end()) - logits->begin();
  out["argmax"] = argmax;
  if (flags.top > 0) {
    std::vector<int32_t> order(logits->size());
    std::iota(order.begin(), order.end(), 0);
    const size_t n = std::min(order.size(), static_cast<size_t>(flags.top));
    std::partial_sort(order.begin(), order.begin() + n, order.end(), [&](int32_t a, int32_t b) {
      return (*logits)[a] != (*logits)[b] ? (*logits)[a] > (*logits)[b] : a < b;
    });
    nlohmann::ordered_json top = nlohmann::ordered_json::array();
    for (size_t i = 0; i < n; ++i) top.push_back({{"id", order[i]}, {"logit", (*logits)[order[i]]}});
    out["top"] = top;
  } else {
    out["logits"] = *logits;
  }
  std::cout << out.dump() << std::endl;
}

}  // namespace

void RegisterLogitsCommand(CLI::App& app) {
  auto flags = std::make_shared<LogitsFlags>();
  CLI::App* cmd = app.add_subcommand("logits", "Print the last position's logits of a token sequence");
  flags->engine.Register(cmd);
  flags->progress.Register(cmd);
  cmd->add_option("--ids", flags->ids, "Comma-separated token ids")->required();
  cmd->add_option("--top", flags->top, "Print only the N largest logits")->check(CLI::Range(1, 1 << 20));
  cmd->callback([flags] { Run(*flags); });
}

}  // namespace moe::moectl
