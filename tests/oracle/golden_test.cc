// Compares the embedded engine with the golden logits and greedy continuations in
// tests/oracle/goldens/ (made by tests/oracle/reference/make_goldens.py; see its README for the
// reference and its numerics).
//
// The golden models are made with no planted successor (make-model --planted-successor-gain 0,
// common/model_maker/make_model.h; dense-tiny also with --embed-std 0.05, so its tied lm_head does
// not just repeat the current token), so which token comes next is decided by the whole network
// (attention, MoE/MLP, norms, RoPE) rather than by the current token alone. Not vacuous: the test
// counts the teacher-forced steps whose reference top-2 gap exceeds twice the tolerance ("decided":
// there our argmax must be the reference's token) and whose token is neither the planted successor
// nor a repeat of the current token, and fails if there are fewer than kMinDecidedFreeSteps.
//
// Tolerances, and why: the reference accumulates in float64 and the engine in fp32 with a fixed
// order, so a bf16 rounding of an intermediate occasionally lands one ulp apart, and through 4
// layers (and, rarely, a router decision between two experts one ulp apart) that moves the logits
// by a small fraction of their spread. So every compared logit must agree within
// kToleranceStd times the standard deviation of the reference's logits over the vocabulary (the
// largest difference measured was 0.125 at a standard deviation of 1, 4 bf16 ulps of a logit near
// 5, at one step of 480; a wrong RoPE, MoE combine or norm moves logits by a large fraction of it
// at nearly every step), and the whole prompt-logits vector in relative L2 to kMaxRelL2Error.
//
// Each greedy step is checked teacher-forced: the engine's prompt logits of the prompt plus the
// reference's first j tokens against the reference's top logits before token j (values within the
// tolerance; the argmax must be the reference's token wherever the reference's top-2 gap exceeds
// twice the tolerance, and within the tolerance of the reference's best at a near-tie). Then the
// engine's own greedy decoding (the KV-cache decode path; engine_decode_test checks it against
// prefill bit for bit) must equal the reference's tokens until they first differ, and they may
// only differ at a near-tie.
//
// Two environment variables point the same comparison elsewhere (scripts/gpu_check.sh uses them):
// MOE_GOLDENS_DIR, a folder of golden folders (default: this repository's tests/oracle/goldens),
// e.g. goldens made by transformers on a GPU; and MOE_GOLDEN_DEVICE, the engine's device ("cpu",
// the default, or "cuda[:N]": the CUDA engine, its expert shards on the same device).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/engine/engine.h"
#include "common/kernels/device_spec.h"
#include "common/model_maker/make_model.h"
#include "common/tensor/bf16.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/util/test_models.h"

namespace moe {
namespace {

constexpr double kToleranceStd = 0.15;
// Relative L2 over the whole vocabulary. A router logit one ulp from the 8th/9th boundary can pick
// a different expert for one token in one layer, which attention then spreads to later positions.
constexpr double kMaxRelL2Error = 5e-2;
constexpr int kTopPerStep = 8;
// Fewest decided steps (see above) that are neither the planted successor nor a repeat, per golden.
constexpr int kMinDecidedFreeSteps = 25;
// Ids below the first added token: the ones make-model plants a successor for.
constexpr int32_t kOrdinaryVocab = 151643;

std::string GoldenDir(const std::string& name) {
  const char* dir = std::getenv("MOE_GOLDENS_DIR");
  return (dir != nullptr && *dir != '\0' ? std::string(dir)
                                         : std::string(MOE_SOURCE_DIR_DEFAULT) + "/tests/oracle/goldens") +
         "/" + name;
}

// MOE_GOLDEN_DEVICE, parsed like --device.
absl::StatusOr<kernels::DeviceSpec> GoldenDevice() {
  const char* device = std::getenv("MOE_GOLDEN_DEVICE");
  return kernels::ParseDeviceSpec(device != nullptr && *device != '\0' ? device : "cpu", "MOE_GOLDEN_DEVICE");
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

int32_t Argmax(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
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

// The golden's model: its preset, dtype and seed, made with the golden's planted-successor gain.
std::string MakeGoldenModel(const nlohmann::json& golden) {
  model_maker::MakeModelOptions options;
  options.preset = golden["preset"];
  options.dtype = golden["dtype"];
  options.seed = golden["seed"];
  options.planted_successor_gain = golden["planted_successor_gain"].get<float>();
  options.embed_std = golden["embed_std"].get<float>();
  options.out_dir = moe::testing::MakeTempDir("moe-golden-model") + "/model";
  const absl::Status status = model_maker::MakeModel(options);
  EXPECT_TRUE(status.ok()) << status;
  return options.out_dir;
}

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, LogitsAndGreedyContinuationsMatchTheReference) {
  const std::string dir = GoldenDir(GetParam());
  const nlohmann::json golden = ReadJson(dir + "/golden.json");
  ASSERT_EQ(golden["seed"], 0) << "test models are made with seed 0";
  ASSERT_EQ(golden["planted_successor_gain"], 0.0) << "the goldens' continuations must not be planted";
  engine::EngineOptions options;
  options.kv_cache_bytes = int64_t{256} << 20;
  absl::StatusOr<kernels::DeviceSpec> device = GoldenDevice();
  ASSERT_TRUE(device.ok()) << device.status();
  options.device = *device;
  std::printf("[golden] %s: reference %s, engine on %s\n", GetParam().c_str(),
              golden.value("reference", std::string("?")).c_str(), device->ToString().c_str());
  auto created = engine::Engine::CreateEmbedded(MakeGoldenModel(golden), options, 3);
  ASSERT_TRUE(created.ok()) << created.status();
  engine::Engine& e = **created;

  int total_steps = 0, decided_steps = 0, decided_free_steps = 0, planted_steps = 0, repeated_steps = 0;
  int free_running_steps = 0;
  int compared_logit_files = 0;
  for (const nlohmann::json& p : golden["prompts"]) {
    const std::string name = p["name"];
    const std::vector<int32_t> ids = p["ids"];
    const std::vector<int32_t> ref_greedy = p["greedy_32"];
    const std::vector<double> gaps = p["greedy_top2_gaps"];
    const nlohmann::json& tops = p["greedy_steps_top"];
    ASSERT_EQ(tops.size(), ref_greedy.size()) << name;

    if (!p["logits_file"].is_null()) {
      auto logits = e.PromptLogits(ids);
      ASSERT_TRUE(logits.ok()) << logits.status();
      const std::vector<float> ref = ReadBf16(dir + "/" + p["logits_file"].get<std::string>());
      ASSERT_EQ(ref.size(), logits->size()) << name;
      const double tolerance = kToleranceStd * p["logits_std"].get<double>();
      double max_abs = 0, num = 0, den = 0;
      for (size_t i = 0; i < ref.size(); ++i) {
        const double d = static_cast<double>((*logits)[i]) - ref[i];
        max_abs = std::max(max_abs, std::fabs(d));
        num += d * d;
        den += static_cast<double>(ref[i]) * ref[i];
      }
      EXPECT_LE(max_abs, tolerance) << name;
      EXPECT_LE(std::sqrt(num / den), kMaxRelL2Error) << name;
      ++compared_logit_files;
      std::printf("[golden] %s/%s: prompt logits max |dlogit| %.4f (tolerance %.4f), rel L2 %.2e\n",
                  GetParam().c_str(), name.c_str(), max_abs, tolerance, std::sqrt(num / den));
    }

    // Teacher-forced: every step against the reference's logits before that step.
    std::vector<int32_t> sequence = ids;
    double worst = 0;  // largest |dlogit| over the recorded top logits, in units of the tolerance
    for (size_t j = 0; j < ref_greedy.size(); ++j) {
      const std::string where = name + " step " + std::to_string(j);
      auto logits = e.PromptLogits(sequence);
      ASSERT_TRUE(logits.ok()) << logits.status();
      const nlohmann::json& top = tops[j];
      const std::vector<int32_t> top_ids = top["ids"];
      const std::vector<double> top_values = top["values"];
      ASSERT_EQ(top_ids.size(), static_cast<size_t>(kTopPerStep)) << where;
      // The reference picked the lowest id among its best (an exact bf16 tie can list another first).
      const auto picked = std::find(top_ids.begin(), top_ids.end(), ref_greedy[j]);
      ASSERT_NE(picked, top_ids.end()) << where;
      ASSERT_EQ(top_values[static_cast<size_t>(picked - top_ids.begin())], top_values[0]) << where;
      const double tolerance = kToleranceStd * top["std"].get<double>();
      for (size_t k = 0; k < top_ids.size(); ++k) {
        const double d = std::fabs((*logits)[static_cast<size_t>(top_ids[k])] - top_values[k]);
        worst = std::max(worst, d / tolerance);
        EXPECT_LE(d, tolerance) << where << " rank " << k << " (token " << top_ids[k] << ")";
      }
      const int32_t ours = Argmax(*logits);
      const int32_t last = sequence.back();
      const bool planted = last < kOrdinaryVocab && ref_greedy[j] == model_maker::PlantedSuccessor(last);
      const bool repeated = ref_greedy[j] == last;
      planted_steps += planted ? 1 : 0;
      repeated_steps += repeated ? 1 : 0;
      if (gaps[j] > 2 * tolerance) {
        EXPECT_EQ(ours, ref_greedy[j]) << where;
        ++decided_steps;
        if (!planted && !repeated) ++decided_free_steps;
      } else {
        // A near-tie: our choice must be one of the reference's best, within the tolerance.
        const auto it = std::find(top_ids.begin(), top_ids.end(), ours);
        ASSERT_NE(it, top_ids.end()) << where << ": our token " << ours << " is not in the reference's top";
        EXPECT_GE(top_values[static_cast<size_t>(it - top_ids.begin())] + 2 * tolerance, top_values[0])
            << where;
      }
      sequence.push_back(ref_greedy[j]);
    }
    total_steps += static_cast<int>(ref_greedy.size());

    // Free-running: the engine's own greedy decoding must equal the reference's tokens until they
    // first differ, and they may only differ at a near-tie (after which both may go on differently).
    const std::vector<int32_t> our_greedy = Greedy(e, ids, static_cast<int>(ref_greedy.size()));
    int step = 0;
    for (; step < static_cast<int>(ref_greedy.size()); ++step) {
      ASSERT_LT(step, static_cast<int>(our_greedy.size())) << name;
      if (our_greedy[static_cast<size_t>(step)] == ref_greedy[static_cast<size_t>(step)]) continue;
      const double tolerance = kToleranceStd * tops[static_cast<size_t>(step)]["std"].get<double>();
      EXPECT_LE(gaps[static_cast<size_t>(step)], 2 * tolerance)
          << name << ": free-running greedy diverges at decided step " << step;
      break;
    }
    free_running_steps += step;
    std::printf(
        "[golden] %s/%s: %zu teacher-forced steps, worst top logit %.2f tolerances; free-running greedy "
        "identical for the first %d\n",
        GetParam().c_str(), name.c_str(), ref_greedy.size(), worst, step);
  }
  std::printf(
      "[golden] %s: %d teacher-forced steps, %d decided (reference top-2 gap > 2 tolerances), %d of them "
      "neither the planted successor nor a repeat; %d planted successors, %d repeats in all; free-running "
      "greedy identical for %d steps\n",
      GetParam().c_str(), total_steps, decided_steps, decided_free_steps, planted_steps, repeated_steps,
      free_running_steps);
  EXPECT_GT(compared_logit_files, 0);
  // Not vacuous: enough steps whose token the network's compute decides, not the plant or a loop.
  EXPECT_GE(decided_free_steps, kMinDecidedFreeSteps) << decided_free_steps << " of " << total_steps;
  EXPECT_LE(planted_steps * 10, total_steps) << planted_steps << " of " << total_steps;
  EXPECT_LE(repeated_steps * 10, total_steps) << repeated_steps << " of " << total_steps;
  EXPECT_EQ(e.num_free_blocks(), e.num_blocks());
}

INSTANTIATE_TEST_SUITE_P(Goldens, GoldenTest, ::testing::Values("tiny_bf16", "tiny_fp8", "dense_tiny_bf16"));

}  // namespace
}  // namespace moe
