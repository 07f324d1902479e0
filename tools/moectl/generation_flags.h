// The generation flags of `moectl generate`, defined once: the prompt and how to wrap it, the
// sampling overrides and the request limits. Both paths convert from here: ToEngineRequest() for
// the embedded engine, ToGenerateRequest() (router_generate.h) for a cluster's router.
#ifndef MOE_TOOLS_MOECTL_GENERATION_FLAGS_H_
#define MOE_TOOLS_MOECTL_GENERATION_FLAGS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "common/engine/engine.h"
#include "common/request/sampling_params.h"
#include "common/tokenizer/chat_template.h"

namespace moe::moectl {

struct GenerationFlags {
  std::string prompt;
  bool chat = false;
  std::optional<bool> thinking;  // nullopt: the chat template's default (thinking on for hybrid Qwen3)
  std::string system;
  int64_t max_tokens = 128;
  int64_t min_tokens = 0;
  request::SamplingOverrides sampling;  // unset fields: the model's generation_config
  bool ignore_eos = false;
  int logprobs = 0;

  // Adds --prompt, --chat, --system, --thinking/--no-thinking, --max-tokens, --min-tokens,
  // --temperature, --top-p, --top-k, --min-p, --repetition-penalty, --seed, --ignore-eos and
  // --logprobs to `cmd`, bound to this object (which must outlive the parse).
  void Register(CLI::App* cmd);

  // The chat messages (an optional system message, then the prompt as the user's) and template
  // options for --chat.
  std::vector<tokenizer::ChatMessage> ChatMessages() const;
  tokenizer::ChatTemplateOptions ChatOptions() const;

  // The embedded engine's request for the tokenized prompt, with `sampling` resolved from
  // `this->sampling` and the model's defaults.
  engine::GenerationRequest ToEngineRequest(std::string id, std::vector<int32_t> prompt_ids,
                                            const request::SamplingParams& resolved) const;
};

}  // namespace moe::moectl

#endif  // MOE_TOOLS_MOECTL_GENERATION_FLAGS_H_
