// The decode path against the prefill path: a token generated from the KV cache (one new position,
// RoPE at that position, attention over the cached keys and values) must see exactly the logits a
// fresh prefill of the whole extended sequence computes. Kernels are row-wise batch-invariant
// (attention_block.h), so "exactly" means bit for bit; an off-by-one in the KV cache (the slot a
// token is written to or the number of cached positions attended) or in the decode position given
// to RoPE changes every later logit. Prompt lengths put the decode steps across KV block
// boundaries (block size 16).
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/engine/sampler.h"
#include "common/engine/testing/requests.h"
#include "gtest/gtest.h"
#include "tests/util/test_models.h"

namespace moe::engine {
namespace {

using engine_testing::GreedyRequest;
using engine_testing::PseudoRandomPrompt;

constexpr int64_t kBlockSize = 16;
constexpr int kDecodeSteps = 5;

std::unique_ptr<Engine> MakeEngine(const std::string& dtype) {
  EngineOptions options;
  options.kv_block_size = kBlockSize;
  options.kv_cache_bytes = int64_t{64} << 20;
  auto engine = Engine::CreateEmbedded(moe::testing::TestModelDir("tiny", dtype), options, 2);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

GenerationRequest Greedy(const std::string& id, std::vector<int32_t> prompt, int64_t max_new) {
  GenerationRequest r = GreedyRequest(id, std::move(prompt), max_new);
  r.top_logprobs = 20;
  return r;
}

// Index of the first differing float (by bits), or -1 when the vectors are bit-identical.
int64_t FirstBitDifference(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) return static_cast<int64_t>(i);
  }
  return -1;
}

class EngineDecodeTest : public ::testing::TestWithParam<std::string> {};

// One sequence at a time, so the step's logits are that sequence's row.
TEST_P(EngineDecodeTest, EachDecodeStepsLogitsAreBitIdenticalToThePrefillOfTheExtendedSequence) {
  auto engine = MakeEngine(GetParam());
  ASSERT_NE(engine, nullptr);
  const int64_t vocab = engine->config().vocab_size;
  // Decode positions 13..17, 30..34, 46..50: each run writes across a block boundary.
  for (const int64_t length : {13, 30, 46}) {
    SCOPED_TRACE("prompt length " + std::to_string(length));
    std::vector<int32_t> sequence = PseudoRandomPrompt(length, static_cast<uint32_t>(length));
    ASSERT_TRUE(engine->AddRequest(Greedy("d", sequence, kDecodeSteps + 1)).ok());
    int generated = 0;
    while (engine->HasWork()) {
      const std::vector<TokenEvent> events = engine->Step();
      ASSERT_EQ(events.size(), 1u);
      ASSERT_NE(events[0].finish_reason, FinishReason::kError) << events[0].error;
      ASSERT_GE(events[0].token_id, 0);
      const std::vector<float>& step_logits = engine->last_step_logits();
      ASSERT_EQ(static_cast<int64_t>(step_logits.size()), vocab);
      auto prefill = engine->PromptLogits(sequence);
      ASSERT_TRUE(prefill.ok()) << prefill.status();
      // generated == 0 is the prefill itself (chunking aside, the same computation); the rest are
      // decode steps at position sequence.size() - 1.
      EXPECT_EQ(FirstBitDifference(step_logits, *prefill), -1)
          << "logits of token " << generated << " at position " << sequence.size() - 1;
      const auto argmax =
          static_cast<int32_t>(std::max_element(prefill->begin(), prefill->end()) - prefill->begin());
      EXPECT_EQ(events[0].token_id, argmax) << "token " << generated;
      sequence.push_back(events[0].token_id);
      ++generated;
    }
    EXPECT_EQ(generated, kDecodeSteps + 1);
    EXPECT_EQ(engine->num_free_blocks(), engine->num_blocks());
  }
}

// Three sequences decoding in one batch, their rows told apart through each event's logprobs: the
// sampled token's logprob and the top-20 (log_softmax over the whole vocabulary, so any logit that
// differs moves them) must be bit-identical to those of the extended sequence's prefill.
TEST_P(EngineDecodeTest, BatchedDecodeStepsMatchThePrefillOfEachExtendedSequence) {
  auto engine = MakeEngine(GetParam());
  ASSERT_NE(engine, nullptr);
  const std::vector<int64_t> lengths = {14, 31, 47};
  std::vector<std::vector<int32_t>> sequences;
  for (size_t i = 0; i < lengths.size(); ++i) {
    sequences.push_back(PseudoRandomPrompt(lengths[i], static_cast<uint32_t>(100 + i)));
    ASSERT_TRUE(engine->AddRequest(Greedy(std::to_string(i), sequences[i], kDecodeSteps + 1)).ok());
  }
  int decode_events = 0;
  while (engine->HasWork()) {
    for (const TokenEvent& event : engine->Step()) {
      ASSERT_NE(event.finish_reason, FinishReason::kError) << event.error;
      ASSERT_GE(event.token_id, 0);
      std::vector<int32_t>& sequence = sequences[static_cast<size_t>(std::stoi(event.request_id))];
      const std::string where =
          "request " + event.request_id + " at position " + std::to_string(sequence.size() - 1);
      auto prefill = engine->PromptLogits(sequence);
      ASSERT_TRUE(prefill.ok()) << prefill.status();
      request::SamplingParams greedy;
      greedy.temperature = 0.0;
      const SampleResult expected = Sampler::Sample(*prefill, sequence, 0, greedy, 0);
      EXPECT_EQ(event.token_id, expected.token_id) << where;
      EXPECT_EQ(std::memcmp(&event.logprob, &expected.logprob, sizeof(float)), 0)
          << where << ": " << event.logprob << " vs " << expected.logprob;
      const std::vector<TokenLogprob> top = Sampler::TopLogprobs(*prefill, 20);
      ASSERT_EQ(event.top_logprobs.size(), top.size()) << where;
      for (size_t j = 0; j < top.size(); ++j) {
        EXPECT_EQ(event.top_logprobs[j].token_id, top[j].token_id) << where << " rank " << j;
        EXPECT_EQ(std::memcmp(&event.top_logprobs[j].logprob, &top[j].logprob, sizeof(float)), 0)
            << where << " rank " << j << ": " << event.top_logprobs[j].logprob << " vs " << top[j].logprob;
      }
      if (sequence.size() > static_cast<size_t>(lengths[static_cast<size_t>(std::stoi(event.request_id))])) {
        ++decode_events;
      }
      sequence.push_back(event.token_id);
    }
  }
  EXPECT_EQ(decode_events, static_cast<int>(lengths.size()) * kDecodeSteps);
  EXPECT_EQ(engine->num_free_blocks(), engine->num_blocks());
}

// Presence and frequency penalties reach the sampler with the engine's split of the sequence:
// each token is Sampler::Sample of the prefill logits of the extended sequence with the tokens
// generated so far (not the prompt) as the output. The tiny random model's top logit leads by 15
// or more, beyond what penalties in [-2, 2] can move, so greedy output cannot show them; a hot
// temperature spreads the mass over the vocabulary, where rewarding the earlier tokens shifts the
// inverse-CDF draw. The test checks that the draws tell the right split from both wrong ones
// (penalties ignored, or the prompt counted as output).
TEST_P(EngineDecodeTest, PresenceAndFrequencyPenaltiesSeeOnlyTheGeneratedTokens) {
  auto engine = MakeEngine(GetParam());
  ASSERT_NE(engine, nullptr);
  constexpr int kSteps = 16;
  std::vector<int32_t> sequence = PseudoRandomPrompt(40, 77);
  const size_t prompt_len = sequence.size();
  GenerationRequest request = Greedy("p", sequence, kSteps);
  request.sampling.temperature = 4.0;
  request.sampling.seed = 5;
  request.sampling.presence_penalty = -2.0;
  request.sampling.frequency_penalty = -2.0;
  const request::SamplingParams params = request.sampling;
  ASSERT_TRUE(engine->AddRequest(std::move(request)).ok());
  int differs_without = 0;     // from the draw with no generated tokens
  int differs_all_output = 0;  // from the draw that counts the prompt as output too
  while (engine->HasWork()) {
    for (const TokenEvent& event : engine->Step()) {
      ASSERT_NE(event.finish_reason, FinishReason::kError) << event.error;
      ASSERT_GE(event.token_id, 0);
      const size_t generated = sequence.size() - prompt_len;
      auto prefill = engine->PromptLogits(sequence);
      ASSERT_TRUE(prefill.ok()) << prefill.status();
      const int32_t expected = Sampler::Sample(*prefill, sequence, generated, params, generated).token_id;
      EXPECT_EQ(event.token_id, expected) << "token " << generated;
      differs_without += expected != Sampler::Sample(*prefill, sequence, 0, params, generated).token_id;
      differs_all_output +=
          expected != Sampler::Sample(*prefill, sequence, sequence.size(), params, generated).token_id;
      sequence.push_back(event.token_id);
    }
  }
  EXPECT_EQ(sequence.size(), prompt_len + kSteps);
  EXPECT_GT(differs_without, 0);
  EXPECT_GT(differs_all_output, 0);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, EngineDecodeTest, ::testing::Values("bf16", "fp8"));

}  // namespace
}  // namespace moe::engine
