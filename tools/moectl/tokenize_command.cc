// Placeholder until the tokenize command lands.
#include "tools/moectl/commands.h"

namespace moe::moectl {
void RegisterTokenizeCommand(CLI::App& app) {}
}  // namespace moe::moectl
