#include "common/engine/testing/requests.h"

#include <utility>

namespace moe::engine_testing {

std::vector<int32_t> PseudoRandomPrompt(int64_t length, uint32_t seed) {
  std::vector<int32_t> ids;
  ids.reserve(static_cast<size_t>(length));
  uint32_t x = seed * 2654435761u + 12345u;
  for (int64_t i = 0; i < length; ++i) {
    x = x * 1664525u + 1013904223u;
    ids.push_back(static_cast<int32_t>(x % 151643u));
  }
  return ids;
}

engine::GenerationRequest GreedyRequest(std::string id, std::vector<int32_t> prompt, int64_t max_new_tokens) {
  engine::GenerationRequest r;
  r.id = std::move(id);
  r.prompt = std::move(prompt);
  r.sampling.temperature = 0.0;
  r.max_new_tokens = max_new_tokens;
  r.ignore_eos = true;
  return r;
}

}  // namespace moe::engine_testing
