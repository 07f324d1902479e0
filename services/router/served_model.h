// What the router knows about the served model: its name, config, generation defaults, tokenizer
// and chat template. The router never loads weights.
#ifndef MOE_SERVICES_ROUTER_SERVED_MODEL_H_
#define MOE_SERVICES_ROUTER_SERVED_MODEL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/model/config.h"
#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/tokenizer.h"
#include "services/router/output_processor.h"

namespace moe::router {

// Immutable after Load; thread-safe to share.
struct ServedModel {
  std::string name;  // directory base name unless given
  model::ModelConfig config;
  model::GenerationConfig generation;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
  tokenizer::ChatTemplateFlavor chat_flavor = tokenizer::ChatTemplateFlavor::kHybrid;
  ThinkTokens think;

  std::string weight_dtype() const { return config.IsFp8() ? "fp8" : "bf16"; }

  // Reads config.json, generation_config.json, tokenizer.json and tokenizer_config.json of `dir`.
  // `name` empty: the directory's base name. Errors name the file.
  static absl::StatusOr<std::unique_ptr<ServedModel>> Load(const std::string& dir, const std::string& name);
};

}  // namespace moe::router

#endif  // MOE_SERVICES_ROUTER_SERVED_MODEL_H_
