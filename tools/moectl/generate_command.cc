// Placeholder until the generate command lands.
#include "tools/moectl/commands.h"

namespace moe::moectl {
void RegisterGenerateCommand(CLI::App& app) {}
}  // namespace moe::moectl
