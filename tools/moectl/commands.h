// moectl subcommands. Each Register* adds one subcommand (with its flags and --help) to the app;
// the subcommand's callback runs the command and throws CLI::RuntimeError(exit_code) after printing
// a message to stderr on failure, so every error is a clear message and a non-zero exit.
#ifndef MOE_TOOLS_MOECTL_COMMANDS_H_
#define MOE_TOOLS_MOECTL_COMMANDS_H_

#include <cstdint>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"

namespace moe::moectl {

void RegisterMakeModelCommand(CLI::App& app);  // make_model_command.cc
void RegisterTokenizeCommand(CLI::App& app);   // tokenize_command.cc
void RegisterLogitsCommand(CLI::App& app);     // logits_command.cc
void RegisterGenerateCommand(CLI::App& app);   // generate_command.cc
void RegisterClusterCommand(CLI::App& app);    // cluster_command.cc (builds with the services)
// `moectl cluster rebalance`, a subcommand of `cluster` (rebalance_command.cc).
void RegisterClusterRebalanceCommand(CLI::App& cluster);

// A byte size: "1073741824", or a number with KiB, MiB or GiB ("512MiB", "1.5GiB"). INVALID_ARGUMENT
// for anything else or a negative size (rebalance_command.cc).
absl::StatusOr<int64_t> ParseByteSize(const std::string& text);

// Prints "moectl <command>: <message>" to stderr and throws CLI::RuntimeError(exit_code).
[[noreturn]] void Fail(const std::string& command, const std::string& message, int exit_code = 1);

}  // namespace moe::moectl

#endif  // MOE_TOOLS_MOECTL_COMMANDS_H_
