#include "services/router/served_model.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"

namespace moe::router {

absl::StatusOr<std::unique_ptr<ServedModel>> ServedModel::Load(const std::string& dir,
                                                               const std::string& name) {
  auto m = std::make_unique<ServedModel>();
  const std::filesystem::path path(dir);
  if (!name.empty()) {
    m->name = name;
  } else {
    // "models/tiny/" has an empty filename(); use the parent's.
    m->name = path.filename().empty() ? path.parent_path().filename().string() : path.filename().string();
  }
  ASSIGN_OR_RETURN(m->config, model::ModelConfig::FromFile((path / "config.json").string()));
  ASSIGN_OR_RETURN(m->generation, model::GenerationConfig::FromModelDir(dir, m->config));
  ASSIGN_OR_RETURN(m->tokenizer, tokenizer::Tokenizer::FromModelDir(path));
  ASSIGN_OR_RETURN(m->chat_flavor, tokenizer::ChatTemplateFlavorFromModelDir(path));
  m->think = ThinkTokens::FromTokenizer(*m->tokenizer);
  return m;
}

}  // namespace moe::router
