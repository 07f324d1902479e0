// Compares the embedded engine with the golden logits and greedy continuations in
// tests/oracle/goldens/ (made by tests/oracle/reference/make_goldens.py; see its README for the
// reference and its numerics).
//
// Tolerances, and why: the reference accumulates in float64 and the engine in fp32 with a fixed
// order, so a bf16 rounding of an intermediate occasionally lands one ulp apart; through 4 layers
// (and, rarely, a router decision between two experts one ulp apart) that moves a logit by up to a
// few bf16 ulps of the logits' magnitude (ulp = 0.25 at |logit| in [32, 64)). So every logit must
// agree within kToleranceUlps ulps of the largest |logit|, and the whole vector in relative L2 to
// kMaxRelL2Error. Argmax and greedy tokens must be identical wherever the reference's decision is
// numerically determined, i.e. its top-2 gap exceeds twice the tolerance (the tiny preset's
// planted successor, common/model_maker/make_model.h, makes that nearly every step); at a near-tie the
// engine's choice must score within the tolerance of the reference's, and the continuation
// comparison stops there because the two sides may then legitimately continue differently.
#include <cmath>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/tensor/bf16.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/util/test_models.h"

namespace moe {
namespace {

constexpr double kToleranceUlps = 4;
// Relative L2 over the whole vocabulary. Long prompts reach ~1e-2 (bf16) and ~3e-2 (fp8, whose
// per-token activation quantization turns a one-ulp bf16 difference at a rounding boundary into a
// one-code fp8 difference) because a router logit one ulp from the 8th/9th boundary can pick a
// different expert for one token in one layer, which attention then spreads to later positions.
constexpr double kMaxRelL2Error = 5e-2;

// The bf16 ulp at magnitude x: 2^(floor(log2 x) - 7).
double Bf16Ulp(double x) {
  return std::ldexp(1.0, std::ilogb(std::max(x, 1e-30)) - 7);
}

std::string GoldenDir(const std::string& name) {
  return std::string(MOE_SOURCE_DIR_DEFAULT) + "/tests/oracle/goldens/" + name;
}

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return nlohmann::json::parse(in);
}

std::vector<float> ReadBf16(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), {});
  std::vector<float> out(bytes.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    bf16 v;
    std::memcpy(&v.bits, bytes.data() + 2 * i, 2);
    out[i] = BF16ToFloat(v);
  }
  return out;
}

std::vector<int32_t> Greedy(engine::Engine& e, const std::vector<int32_t>& prompt, int steps) {
  engine::GenerationRequest r;
  r.id = "golden";
  r.prompt = prompt;
  r.sampling.temperature = 0.0;
  r.max_new_tokens = steps;
  std::vector<int32_t> out;
  EXPECT_TRUE(e.AddRequest(r).ok());
  while (e.HasWork()) {
    for (const auto& ev : e.Step()) {
      if (ev.token_id >= 0) out.push_back(ev.token_id);
      EXPECT_NE(ev.finish_reason, engine::FinishReason::kError) << ev.error;
    }
  }
  return out;
}

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, LogitsAndGreedyContinuationsMatchTheReference) {
  const std::string dir = GoldenDir(GetParam());
  const nlohmann::json golden = ReadJson(dir + "/golden.json");
  const std::string preset = golden["preset"], dtype = golden["dtype"];
  ASSERT_EQ(golden["seed"], 0) << "test models are made with seed 0";
  engine::EngineOptions options;
  options.kv_cache_bytes = int64_t{256} << 20;
  auto created = engine::Engine::CreateEmbedded(moe::testing::TestModelDir(preset, dtype), options, 3);
  ASSERT_TRUE(created.ok()) << created.status();
  engine::Engine& e = **created;

  int decided_steps = 0, total_steps = 0, compared_logit_files = 0;
  for (const nlohmann::json& p : golden["prompts"]) {
    const std::string name = p["name"];
    const std::vector<int32_t> ids = p["ids"];
    auto logits = e.PromptLogits(ids);
    ASSERT_TRUE(logits.ok()) << logits.status();
    const double gap = p["top2_gap"];
    const double tolerance = kToleranceUlps * Bf16Ulp(p["max_abs_logit"].get<double>());
    const int32_t ref_argmax = p["argmax"];
    const auto ours =
        static_cast<int32_t>(std::max_element(logits->begin(), logits->end()) - logits->begin());

    if (!p["logits_file"].is_null()) {
      const std::vector<float> ref = ReadBf16(dir + "/" + p["logits_file"].get<std::string>());
      ASSERT_EQ(ref.size(), logits->size()) << name;
      double max_abs = 0, num = 0, den = 0;
      for (size_t i = 0; i < ref.size(); ++i) {
        const double d = static_cast<double>((*logits)[i]) - ref[i];
        max_abs = std::max(max_abs, std::fabs(d));
        num += d * d;
        den += static_cast<double>(ref[i]) * ref[i];
      }
      EXPECT_LE(max_abs, tolerance) << name;
      EXPECT_LE(std::sqrt(num / den), kMaxRelL2Error) << name;
      EXPECT_NEAR((*logits)[ref_argmax], ref[ref_argmax], tolerance) << name;
      ++compared_logit_files;
      std::printf(
          "[golden] %s/%s: max |dlogit| %.4f (tolerance %.3f), rel L2 %.2e, argmax %d vs %d "
          "(ref gap %.3f)\n",
          GetParam().c_str(), name.c_str(), max_abs, tolerance, std::sqrt(num / den), ours, ref_argmax, gap);
    }
    if (gap > 2 * tolerance) {
      EXPECT_EQ(ours, ref_argmax) << name;
    } else {
      // A near-tie: our choice must score within the tolerance of the reference's best.
      EXPECT_GE((*logits)[ours] + tolerance, (*logits)[ref_argmax]) << name;
    }

    const std::vector<int32_t> ref_greedy = p["greedy_32"];
    const std::vector<double> gaps = p["greedy_top2_gaps"];
    const std::vector<int32_t> our_greedy = Greedy(e, ids, static_cast<int>(ref_greedy.size()));
    int step = 0;
    for (; step < static_cast<int>(ref_greedy.size()); ++step) {
      if (gaps[static_cast<size_t>(step)] <= 2 * tolerance) break;  // undetermined from here on
      ASSERT_LT(step, static_cast<int>(our_greedy.size())) << name;
      ASSERT_EQ(our_greedy[static_cast<size_t>(step)], ref_greedy[static_cast<size_t>(step)])
          << name << " diverges at greedy step " << step;
    }
    decided_steps += step;
    total_steps += static_cast<int>(ref_greedy.size());
    std::printf("[golden] %s/%s: greedy identical for the %d decided steps of %zu\n", GetParam().c_str(),
                name.c_str(), step, ref_greedy.size());
  }
  EXPECT_GT(compared_logit_files, 0);
  // The goldens are only a meaningful check of greedy decoding if most steps are decided.
  EXPECT_GE(decided_steps * 4, total_steps * 3) << decided_steps << " of " << total_steps;
  EXPECT_EQ(e.num_free_blocks(), e.num_blocks());
}

INSTANTIATE_TEST_SUITE_P(Goldens, GoldenTest, ::testing::Values("tiny_bf16", "tiny_fp8", "dense_tiny_bf16"));

}  // namespace
}  // namespace moe
