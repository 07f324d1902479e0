#include "tools/moectl/generation_flags.h"

#include <utility>

namespace moe::moectl {

void GenerationFlags::Register(CLI::App* cmd) {
  cmd->add_option("--prompt", prompt, "Prompt text (the user message with --chat)")->required();
  cmd->add_flag("--chat", chat, "Wrap the prompt in the model's chat template");
  cmd->add_option("--system", system, "System message (with --chat)");
  // Two callbacks rather than add_flag on the optional: CLI11 treats std::optional<bool> as a
  // counter and sets it to 0 (false) before parsing, which turned thinking off by default.
  CLI::Option* on = cmd->add_flag_callback(
      "--thinking", [this] { thinking = true; },
      "Hybrid Qwen3 chat: enable_thinking true (default: the template's, which thinks)");
  CLI::Option* off = cmd->add_flag_callback(
      "--no-thinking", [this] { thinking = false; }, "Hybrid Qwen3 chat: enable_thinking false");
  on->excludes(off);
  cmd->add_option("--max-tokens", max_tokens, "Maximum new tokens")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  cmd->add_option("--min-tokens", min_tokens, "Minimum new tokens before EOS may end")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
  cmd->add_option("--temperature", sampling.temperature, "Sampling temperature; 0 is greedy");
  cmd->add_option("--top-p", sampling.top_p, "Nucleus sampling mass in (0, 1]");
  cmd->add_option("--top-k", sampling.top_k, "Keep the K most likely tokens; 0 or -1 disables");
  cmd->add_option("--min-p", sampling.min_p, "Drop tokens below min_p x the top probability");
  cmd->add_option("--repetition-penalty", sampling.repetition_penalty, "Repetition penalty (> 0)");
  cmd->add_option("--presence-penalty", sampling.presence_penalty,
                  "Subtracted once from tokens already generated, in [-2, 2]");
  cmd->add_option("--frequency-penalty", sampling.frequency_penalty,
                  "Subtracted per time a token was generated, in [-2, 2]");
  cmd->add_option("--seed", sampling.seed, "Random seed");
  cmd->add_flag("--ignore-eos", ignore_eos, "Keep generating past end-of-sequence tokens");
  cmd->add_option("--logprobs", logprobs, "Top-N logprobs per token (--json)")->check(CLI::Range(0, 20));
}

std::vector<tokenizer::ChatMessage> GenerationFlags::ChatMessages() const {
  std::vector<tokenizer::ChatMessage> messages;
  if (!system.empty()) messages.push_back({"system", system, std::nullopt, {}});
  messages.push_back({"user", prompt, std::nullopt, {}});
  return messages;
}

tokenizer::ChatTemplateOptions GenerationFlags::ChatOptions() const {
  tokenizer::ChatTemplateOptions options;
  options.enable_thinking = thinking;
  return options;
}

engine::GenerationRequest GenerationFlags::ToEngineRequest(std::string id, std::vector<int32_t> prompt_ids,
                                                           const request::SamplingParams& resolved) const {
  engine::GenerationRequest request;
  request.id = std::move(id);
  request.prompt = std::move(prompt_ids);
  request.sampling = resolved;
  request.max_new_tokens = max_tokens;
  request.min_new_tokens = min_tokens;
  request.ignore_eos = ignore_eos;
  request.top_logprobs = logprobs;
  return request;
}

}  // namespace moe::moectl
