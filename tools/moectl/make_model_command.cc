// moectl make-model --preset NAME --out DIR [--dtype bf16|fp8] [--seed N] [--shards N]
//                   [--hot-experts N [--hot-expert-gain G]] [--force]
#include <chrono>
#include <iostream>
#include <string>

#include "absl/strings/str_join.h"
#include "common/model_maker/make_model.h"
#include "tools/moectl/commands.h"
#include "tools/moectl/progress.h"

namespace moe::moectl {

void RegisterMakeModelCommand(CLI::App& app) {
  auto options = std::make_shared<model_maker::MakeModelOptions>();
  CLI::App* cmd = app.add_subcommand(
      "make-model",
      "Write a Hugging Face model directory with random weights of the real Qwen3-MoE architecture");
  cmd->add_option("--preset", options->preset, "Preset: " + absl::StrJoin(model_maker::PresetNames(), ", "))
      ->required();
  cmd->add_option("--out", options->out_dir, "Output directory (created; must be empty unless --force)")
      ->required();
  cmd->add_option("--dtype", options->dtype,
                  "bf16, or fp8 (the real -FP8 format: e4m3 + 128x128 block scales)");
  cmd->add_option("--seed", options->seed, "Seed of the deterministic weight generator");
  cmd->add_option("--shards", options->shards, "Write exactly N shards + index (0: one file up to 5 GB)");
  cmd->add_option("--threads", options->threads, "Generator threads (0: all cores)");
  cmd->add_option(
      "--planted-successor-gain", options->planted_successor_gain,
      "Strength of lm_head's planted successor (default 8; 0: none, as the oracle goldens' model)");
  cmd->add_option("--embed-std", options->embed_std,
                  "Standard deviation of embed_tokens (default 1; the dense-tiny oracle golden uses 0.05)");
  cmd->add_option("--hot-experts", options->hot_experts,
                  "Skewed routing: experts [0, N) of every MoE layer are picked far more often (default 0)");
  cmd->add_option("--hot-expert-gain", options->hot_expert_gain,
                  "How much the hot experts' router rows are scaled (default 4; needs --hot-experts)");
  cmd->add_flag("--force", options->force, "Write into a non-empty --out directory");
  auto progress = std::make_shared<Progress>();
  progress->Register(cmd);
  cmd->callback([options, progress] {
    progress->Enable("make-model", /*quiet=*/false);
    options->progress = [progress](int64_t done, int64_t total) {
      constexpr int64_t kMiB = int64_t{1} << 20;
      progress->Update("writing weights (MiB)", (done + kMiB - 1) / kMiB, (total + kMiB - 1) / kMiB);
    };
    const auto start = std::chrono::steady_clock::now();
    absl::Status status = model_maker::MakeModel(*options);
    progress->Finish();
    if (!status.ok()) Fail("make-model", std::string(status.message()));
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cerr << "moectl make-model: wrote " << options->preset << " (" << options->dtype << ") to "
              << options->out_dir << " in " << seconds << " s" << std::endl;
  });
}

}  // namespace moe::moectl
