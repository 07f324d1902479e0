// moectl generate --model DIR --prompt TEXT [--chat] [--max-tokens N] [sampling flags] [--json]:
// tokenizes (optionally through the chat template), runs the embedded engine and streams the text
// token by token. Unset sampling flags take the model's generation_config defaults;
// --temperature 0 is greedy.
#include <cmath>
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
#ifdef MOE_MOECTL_WITH_CLUSTER
#include "tools/moectl/router_generate.h"
#endif

namespace moe::moectl {
namespace {

struct GenerateFlags {
  EngineFlags engine;
  std::string router;
  double timeout_s = 0;
  std::string prompt;
  bool chat = false;
  std::optional<bool> thinking;
  std::string system;
  int64_t max_tokens = 128;
  int64_t min_tokens = 0;
  std::optional<double> temperature;
  std::optional<double> top_p;
  std::optional<int64_t> top_k;
  std::optional<double> min_p;
  std::optional<double> repetition_penalty;
  std::optional<uint64_t> seed;
  bool ignore_eos = false;
  int logprobs = 0;
  bool json = false;
};

void Run(const GenerateFlags& flags) {
#ifdef MOE_MOECTL_WITH_CLUSTER
  if (!flags.router.empty()) {
    RouterGenerateOptions o;
    o.router = flags.router;
    o.prompt = flags.prompt;
    o.chat = flags.chat;
    o.thinking = flags.thinking;
    o.system = flags.system;
    o.max_tokens = flags.max_tokens;
    o.min_tokens = flags.min_tokens;
    o.temperature = flags.temperature;
    o.top_p = flags.top_p;
    o.top_k = flags.top_k;
    o.min_p = flags.min_p;
    o.repetition_penalty = flags.repetition_penalty;
    o.seed = flags.seed;
    o.ignore_eos = flags.ignore_eos;
    o.logprobs = flags.logprobs;
    o.json = flags.json;
    o.timeout_s = flags.timeout_s;
    GenerateViaRouter(o);
    return;
  }
#endif
  if (flags.engine.model_dir.empty()) Fail("generate", "one of --model or --router is required");
  auto tokenizer = tokenizer::Tokenizer::FromModelDir(flags.engine.model_dir);
  if (!tokenizer.ok()) Fail("generate", tokenizer.status().ToString());

  std::string text = flags.prompt;
  if (flags.chat) {
    auto flavor = tokenizer::ChatTemplateFlavorFromModelDir(flags.engine.model_dir);
    if (!flavor.ok()) Fail("generate", flavor.status().ToString());
    std::vector<tokenizer::ChatMessage> messages;
    if (!flags.system.empty()) messages.push_back({"system", flags.system, std::nullopt, {}});
    messages.push_back({"user", flags.prompt, std::nullopt, {}});
    tokenizer::ChatTemplateOptions options;
    options.enable_thinking = flags.thinking;
    auto rendered = tokenizer::RenderChat(*flavor, messages, options);
    if (!rendered.ok()) Fail("generate", rendered.status().ToString());
    text = *rendered;
  }
  auto ids = (*tokenizer)->Encode(text);
  if (!ids.ok()) Fail("generate", "--prompt: " + std::string(ids.status().message()));
  if (ids->empty()) Fail("generate", "--prompt: the prompt is empty");

  auto engine = engine::Engine::CreateEmbedded(flags.engine.model_dir, flags.engine.ToOptions(),
                                               flags.engine.expert_shards);
  if (!engine.ok()) Fail("generate", engine.status().ToString());

  request::SamplingOverrides overrides{flags.temperature,        flags.top_k, flags.top_p, flags.min_p,
                                       flags.repetition_penalty, flags.seed};
  auto sampling = request::ResolveSamplingParams(overrides, (*engine)->generation_config());
  if (!sampling.ok()) Fail("generate", sampling.status().ToString());

  engine::GenerationRequest request;
  request.id = "moectl";
  request.prompt = *ids;
  request.sampling = *sampling;
  request.max_new_tokens = flags.max_tokens;
  request.min_new_tokens = flags.min_tokens;
  request.ignore_eos = flags.ignore_eos;
  request.top_logprobs = flags.logprobs;
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
        {"usage", {{"prompt_tokens", ids->size()}, {"completion_tokens", completion_tokens}}}};
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
  CLI::Option* router = cmd->add_option("--router", flags->router, "HOST:PORT of a running cluster's router");
  router->excludes(cmd->get_option("--model"));
  cmd->add_option("--timeout", flags->timeout_s, "Deadline in seconds (--router)");
#endif
  cmd->add_option("--prompt", flags->prompt, "Prompt text (the user message with --chat)")->required();
  cmd->add_flag("--chat", flags->chat, "Wrap the prompt in the model's chat template");
  cmd->add_option("--system", flags->system, "System message (with --chat)");
  cmd->add_flag("--thinking,!--no-thinking", flags->thinking,
                "Hybrid Qwen3 chat: enable_thinking true/false (default: the template's)");
  cmd->add_option("--max-tokens", flags->max_tokens, "Maximum new tokens")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  cmd->add_option("--min-tokens", flags->min_tokens, "Minimum new tokens before EOS may end")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
  cmd->add_option("--temperature", flags->temperature, "Sampling temperature; 0 is greedy");
  cmd->add_option("--top-p", flags->top_p, "Nucleus sampling mass in (0, 1]");
  cmd->add_option("--top-k", flags->top_k, "Keep the K most likely tokens; 0 or -1 disables");
  cmd->add_option("--min-p", flags->min_p, "Drop tokens below min_p x the top probability");
  cmd->add_option("--repetition-penalty", flags->repetition_penalty, "Repetition penalty (> 0)");
  cmd->add_option("--seed", flags->seed, "Random seed");
  cmd->add_flag("--ignore-eos", flags->ignore_eos, "Keep generating past end-of-sequence tokens");
  cmd->add_option("--logprobs", flags->logprobs, "Top-N logprobs per token (--json)")
      ->check(CLI::Range(0, 20));
  cmd->add_flag("--json", flags->json, "One JSON object per token, then a final summary");
  cmd->callback([flags] { Run(*flags); });
}

}  // namespace moe::moectl
