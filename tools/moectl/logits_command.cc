// Placeholder until the logits command lands.
#include "tools/moectl/commands.h"

namespace moe::moectl {
void RegisterLogitsCommand(CLI::App& app) {}
}  // namespace moe::moectl
