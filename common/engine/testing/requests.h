// Requests for tests and benchmarks of the engine: pseudo-random prompts and greedy requests, one
// definition for engine_test, engine_decode_test and engine_bench.
#ifndef MOE_COMMON_ENGINE_TESTING_REQUESTS_H_
#define MOE_COMMON_ENGINE_TESTING_REQUESTS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/engine/engine.h"

namespace moe::engine_testing {

// `length` token ids below 151643 (Qwen3's ordinary vocabulary) from a linear congruential generator
// seeded with `seed`: the same prompt for the same arguments on every machine.
std::vector<int32_t> PseudoRandomPrompt(int64_t length, uint32_t seed);

// Greedy decoding (temperature 0) of `max_new_tokens` tokens that ignores EOS, so that every
// request runs its full length.
engine::GenerationRequest GreedyRequest(std::string id, std::vector<int32_t> prompt, int64_t max_new_tokens);

}  // namespace moe::engine_testing

#endif  // MOE_COMMON_ENGINE_TESTING_REQUESTS_H_
