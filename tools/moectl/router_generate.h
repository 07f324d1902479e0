// `moectl generate --router HOST:PORT`: the same command against a running cluster's public API.
#ifndef MOE_TOOLS_MOECTL_ROUTER_GENERATE_H_
#define MOE_TOOLS_MOECTL_ROUTER_GENERATE_H_

#include <cstdint>
#include <optional>
#include <string>

namespace moe::moectl {

struct RouterGenerateOptions {
  std::string router;
  std::string prompt;
  bool chat = false;
  std::optional<bool> thinking;
  std::string system;
  int64_t max_tokens = 128;
  int64_t min_tokens = 0;
  std::optional<double> temperature, top_p, min_p, repetition_penalty;
  std::optional<int64_t> top_k;
  std::optional<uint64_t> seed;
  bool ignore_eos = false;
  int logprobs = 0;
  bool json = false;
  double timeout_s = 0;  // 0: no deadline
};

// Streams the answer to stdout; on failure prints the gRPC status and throws CLI::RuntimeError.
void GenerateViaRouter(const RouterGenerateOptions& options);

}  // namespace moe::moectl

#endif  // MOE_TOOLS_MOECTL_ROUTER_GENERATE_H_
