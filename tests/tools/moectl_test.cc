// Runs the real moectl binary: each bad input gets a clear message and a non-zero exit, never a
// crash; good input gives the documented JSON.
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/util/test_models.h"

namespace moe {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

struct Result {
  int exit_code = -1;
  bool crashed = false;
  std::string out;
  std::string err;
};

std::string Moectl() {
  return std::string(MOE_BINARY_DIR_DEFAULT) + "/bin/moectl";
}

std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Runs moectl with `args` (already quoted), feeding `input` on stdin.
Result RunMoectl(const std::string& args, const std::string& input = "") {
  const std::string dir = testing::MakeTempDir("moectl-run");
  const std::string in = dir + "/in", out = dir + "/out", err = dir + "/err";
  std::ofstream(in) << input;
  const std::string cmd = Moectl() + " " + args + " <" + in + " >" + out + " 2>" + err;
  const int status = std::system(cmd.c_str());
  Result r;
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  r.crashed = WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) >= 128);
  std::ifstream o(out), e(err);
  r.out.assign(std::istreambuf_iterator<char>(o), {});
  r.err.assign(std::istreambuf_iterator<char>(e), {});
  return r;
}

void ExpectCleanFailure(const Result& r, const std::string& message) {
  EXPECT_FALSE(r.crashed) << r.err;
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr(message));
}

std::string CopyModel(const std::string& src) {
  const std::string dst = testing::MakeTempDir("moectl-model") + "/model";
  fs::copy(src, dst, fs::copy_options::recursive);
  return dst;
}

TEST(MoectlTest, EveryCommandHasHelp) {
  for (const std::string cmd : {"", "make-model", "tokenize", "logits", "generate"}) {
    Result r = RunMoectl(cmd + " --help");
    EXPECT_EQ(r.exit_code, 0) << cmd;
    EXPECT_THAT(r.out, HasSubstr("--")) << cmd;
  }
}

TEST(MoectlTest, LogitsPrintsTheLastPositionAsJson) {
  const std::string& model = testing::TestModelDir("tiny", "bf16");
  Result r = RunMoectl("logits --model " + model + " --ids 9707,1879 --top 3");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto json = nlohmann::json::parse(r.out);
  EXPECT_EQ(json["num_tokens"], 2);
  EXPECT_EQ(json["vocab_size"], 151936);
  ASSERT_EQ(json["top"].size(), 3u);
  EXPECT_EQ(json["top"][0]["id"], json["argmax"]);
  EXPECT_GE(json["top"][0]["logit"].get<double>(), json["top"][1]["logit"].get<double>());
}

TEST(MoectlTest, LogitsRejectsTokenIdsOutsideTheVocabulary) {
  const std::string& model = testing::TestModelDir("tiny", "bf16");
  ExpectCleanFailure(RunMoectl("logits --model " + model + " --ids 1,151936"), "outside the vocabulary");
  ExpectCleanFailure(RunMoectl("logits --model " + model + " --ids 1,x"), "--ids");
  ExpectCleanFailure(RunMoectl("logits --model " + model + " --ids ''"), "--ids");
}

TEST(MoectlTest, LogitsRejectsAPromptLongerThanTheContext) {
  const std::string& model = testing::TestModelDir("tiny", "bf16");
  std::string ids = "1";
  for (int i = 0; i < 5000; ++i) ids += ",1";  // tiny's context is 4096
  ExpectCleanFailure(RunMoectl("logits --model " + model + " --ids " + ids), "context length");
}

TEST(MoectlTest, TruncatedCheckpointIsAClearError) {
  const std::string model = CopyModel(testing::TestModelDir("tiny", "bf16"));
  const fs::path file = fs::path(model) / "model.safetensors";
  ASSERT_TRUE(fs::exists(file));
  fs::resize_file(file, fs::file_size(file) / 2);
  ExpectCleanFailure(RunMoectl("logits --model " + model + " --ids 1"), "model.safetensors");
}

TEST(MoectlTest, CorruptHeaderIsAClearError) {
  const std::string model = CopyModel(testing::TestModelDir("tiny", "bf16"));
  const fs::path file = fs::path(model) / "model.safetensors";
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(8);
    f.write("!!!!", 4);  // breaks the JSON header
  }
  ExpectCleanFailure(RunMoectl("logits --model " + model + " --ids 1"), "model.safetensors");
}

TEST(MoectlTest, UnsupportedConfigIsAClearError) {
  const std::string model = CopyModel(testing::TestModelDir("tiny", "bf16"));
  const fs::path config = fs::path(model) / "config.json";
  std::ifstream in(config);
  auto json = nlohmann::json::parse(in);
  json["model_type"] = "llama4";
  std::ofstream(config) << json.dump();
  ExpectCleanFailure(RunMoectl("logits --model " + model + " --ids 1"), "model_type");
}

TEST(MoectlTest, GenerateRejectsAnEmptyPrompt) {
  const std::string& model = testing::TestModelDir("tiny", "bf16");
  ExpectCleanFailure(RunMoectl("generate --model " + model + " --prompt ''"), "empty");
}

TEST(MoectlTest, GenerateRejectsInvalidUtf8) {
  const std::string& model = testing::TestModelDir("tiny", "bf16");
  ExpectCleanFailure(RunMoectl("generate --model " + model + " --prompt \"$(printf 'abc\\377')\""), "UTF-8");
}

TEST(MoectlTest, GenerateRejectsBadSamplingFlags) {
  const std::string& model = testing::TestModelDir("tiny", "bf16");
  ExpectCleanFailure(RunMoectl("generate --model " + model + " --prompt hi --temperature -1"), "temperature");
  ExpectCleanFailure(RunMoectl("generate --model " + model + " --prompt hi --top-p 1.5"), "top_p");
}

TEST(MoectlTest, GenerateStreamsJsonTokensAndAFinalSummary) {
  const std::string& model = testing::TestModelDir("tiny", "bf16");
  Result r = RunMoectl("generate --model " + model +
                       " --prompt 'Hello there' --chat --max-tokens 5 --temperature 0 --ignore-eos --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<nlohmann::json> lines;
  std::istringstream stream(r.out);
  for (std::string line; std::getline(stream, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_GE(lines.size(), 6u);
  int tokens = 0;
  for (const auto& line : lines) {
    if (line.contains("id")) {
      ++tokens;
      EXPECT_TRUE(line.contains("text"));
      EXPECT_LE(line["logprob"].get<double>(), 0.0);
    }
  }
  EXPECT_EQ(tokens, 5);
  EXPECT_EQ(lines.back()["finish_reason"], "length");
  EXPECT_EQ(lines.back()["usage"]["completion_tokens"], 5);
}

TEST(MoectlTest, GreedyGenerationIsTheSameWithShardedExperts) {
  const std::string& model = testing::TestModelDir("tiny", "fp8");
  const std::string common = " --prompt 'Tell me a story' --max-tokens 8 --temperature 0 --ignore-eos --json";
  Result one = RunMoectl("generate --model " + model + common);
  Result four = RunMoectl("generate --model " + model + common + " --expert-shards 4");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  EXPECT_EQ(one.out, four.out);
}

}  // namespace
}  // namespace moe
