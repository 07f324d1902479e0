// moectl: the user and operator CLI (docs/operations.md#moectl).
#include "CLI/CLI.hpp"
#include "tools/moectl/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"moectl: make models, tokenize, run and operate the Qwen3-MoE serving cluster"};
  app.require_subcommand(1);
  moe::moectl::RegisterMakeModelCommand(app);
  moe::moectl::RegisterTokenizeCommand(app);
  moe::moectl::RegisterLogitsCommand(app);
  moe::moectl::RegisterGenerateCommand(app);
#ifdef MOE_MOECTL_WITH_CLUSTER
  moe::moectl::RegisterClusterCommand(app);
#endif
  CLI11_PARSE(app, argc, argv);
  return 0;
}
