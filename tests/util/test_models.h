// Generated models for tests: made once per test process into a temporary directory with
// `moectl make-model`'s library (common/model_maker/make_model.h) and removed at exit.
#ifndef MOE_TESTS_UTIL_TEST_MODELS_H_
#define MOE_TESTS_UTIL_TEST_MODELS_H_

#include <string>

namespace moe::testing {

// A preset name ending in this ("tiny+skewed") makes that preset with skewed routing: experts 0..3
// of every MoE layer are hot (MakeModelOptions::hot_experts 4, hot_expert_gain 4).
inline constexpr char kSkewedSuffix[] = "+skewed";

// Directory of preset `preset` ("tiny", "dense-tiny", "tiny+skewed", ...) in `dtype` ("bf16" or
// "fp8"), seed 0. Aborts the test binary with a message if the model cannot be made.
const std::string& TestModelDir(const std::string& preset, const std::string& dtype);

// A fresh empty temporary directory, removed at exit.
std::string MakeTempDir(const std::string& prefix);

}  // namespace moe::testing

#endif  // MOE_TESTS_UTIL_TEST_MODELS_H_
