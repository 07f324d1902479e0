#include <iostream>

#include "tools/moectl/commands.h"

namespace moe::moectl {

void Fail(const std::string& command, const std::string& message, int exit_code) {
  std::cerr << "moectl " << command << ": " << message << std::endl;
  throw CLI::RuntimeError(exit_code);
}

}  // namespace moe::moectl
