// Placeholder until the make_model command lands.
#include "tools/moectl/commands.h"

namespace moe::moectl {
void RegisterMakeModelCommand(CLI::App& app) {}
}  // namespace moe::moectl
