// moectl generate --model DIR --prompt TEXT [--chat] [--max-tokens N] [sampling flags] [--json]:
// tokenizes (optionally through the chat template), runs the embedded engine and streams the text
// token by token. Unset sampling flags take the model's generation_config defaults;
// --temperature 0 is greedy.
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/request/sampling_params.h"
#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/incremental_detokenizer.h"
#include "common/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"
#include "tools/moectl/commands.h"
#include "tools/moectl/engine_options.h"
#include "tools/moectl/generation_flags.h"
#include "tools/moectl/progress.h"
#ifdef MOE_MOECTL_WITH_CLUSTER
#include "tools/moectl/router_generate.h"
#endif

namespace moe::moectl {
namespace {

struct GenerateFlags {
  EngineFlags engine;
  GenerationFlags generation;
  Progress progress;
  std::string router;
  double timeout_s = 0;
  bool json = false;
};

void Run(GenerateFlags& flags) {
#ifdef MOE_MOECTL_WITH_CLUSTER
  if (!flags.router.empty()) {
    GenerateViaRouter(flags.generation, flags.router, flags.timeout_s, flags.json);
    return;
  }
#endif
  if (flags.engine.model_dir.empty()) Fail("generate", "one of --model or --router is required");
  auto tokenizer = tokenizer::Tokenizer::FromModelDir(flags.engine.model_dir);
  if (!tokenizer.ok()) Fail("generate", tokenizer.status().ToString());

  const GenerationFlags& g = flags.generation;
  std::string text = g.prompt;
  if (g.chat) {
    auto flavor = tokenizer::ChatTemplateFlavorFromModelDir(flags.engine.model_dir);
    if (!flavor.ok()) Fail("generate", flavor.status().ToString());
    auto rendered = tokenizer::RenderChat(*flavor, g.ChatMessages(), g.ChatOptions());
    if (!rendered.ok()) Fail("generate", rendered.status().ToString());
    text = *rendered;
  }
  auto ids = (*tokenizer)->Encode(text);
  if (!ids.ok()) Fail("generate", "--prompt: " + std::string(ids.status().message()));
  if (ids->empty()) Fail("generate", "--prompt: the prompt is empty");

  auto options = flags.engine.ToOptions();
  if (!options.ok()) Fail("generate", options.status().ToString());
  flags.progress.Enable("generate", flags.json);
  flags.progress.ShowModelLoading();
  auto engine = engine::Engine::CreateEmbedded(flags.engine.model_dir, *options, flags.engine.expert_shards);
  flags.progress.Finish();
  if (!engine.ok()) Fail("generate", engine.status().ToString());

  auto sampling = request::ResolveSamplingParams(g.sampling, (*engine)->generation_config());
  if (!sampling.ok()) Fail("generate", sampling.status().ToString());
  const engine::GenerationRequest request = g.ToEngineRequest("moectl", *ids, *sampling);
  if (absl::Status s = (*engine)->AddRequest(request); !s.ok()) Fail("generate", s.ToString());

  // Special tokens (e.g. the final <|im_end|>) are not shown as text; <think> tags are.
  tokenizer::IncrementalDetokenizer detokenizer(**tokenizer, /*skip_special_tokens=*/true);
  engine::FinishReason finish = engine::FinishReason::kNone;
  std::string error;
  int64_t completion_tokens = 0;
  while ((*engine)->HasWork()) {
    for (const engine::TokenEvent& event : (*engine)->Step()) {
      if (event.token_id >= 0) {
        const std::string delta = detokenizer.Add(event.token_id);
        if (flags.json) {
          nlohmann::ordered_json line{{"id", event.token_id}, {"text", delta}, {"logprob", event.logprob}};
          if (!event.top_logprobs.empty()) {
            nlohmann::ordered_json top = nlohmann::ordered_json::array();
            for (const auto& t : event.top_logprobs) {
              top.push_back({{"id", t.token_id}, {"logprob", t.logprob}});
            }
            line["top_logprobs"] = top;
          }
          std::cout << line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
        } else {
          std::cout << delta << std::flush;
        }
      }
      if (event.finish_reason != engine::FinishReason::kNone) {
        finish = event.finish_reason;
        if (!event.error.ok()) error = event.error.ToString();
        completion_tokens = event.completion_tokens;
      }
    }
  }
  const std::string tail = detokenizer.Flush();
  if (flags.json) {
    if (!tail.empty()) std::cout << nlohmann::ordered_json{{"text", tail}}.dump() << std::endl;
    nlohmann::ordered_json done{
        {"finish_reason", engine::FinishReasonName(finish)},
        {"usage", {{"prompt_tokens", ids->size()}, {"completion_tokens", completion_tokens}}},
        {"prompt_ids", *ids}};
    if (!error.empty()) done["error"] = error;
    std::cout << done.dump() << std::endl;
  } else {
    std::cout << tail << std::endl;
  }
  if (finish == engine::FinishReason::kError) Fail("generate", error);
}

}  // namespace

void RegisterGenerateCommand(CLI::App& app) {
  auto flags = std::make_shared<GenerateFlags>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text with the embedded engine (streams)");
  flags->engine.Register(cmd, /*required=*/false);
#ifdef MOE_MOECTL_WITH_CLUSTER
  CLI::Option* router = cmd->add_option(
      "--router", flags->router, "HOST:PORT of a running cluster's router (its default port is 50051)");
  router->excludes(cmd->get_option("--model"));
  cmd->add_option("--timeout", flags->timeout_s, "Deadline in seconds (--router)");
#endif
  flags->generation.Register(cmd);
  flags->progress.Register(cmd);
  cmd->add_flag("--json", flags->json,
                "One JSON object per token, then a summary (finish_reason, usage, prompt_ids)")
      ->excludes("--progress");
  cmd->callback([flags] { Run(*flags); });
}

}  // namespace moe::moectl
