// Runs the real moectl binary: each bad input gets a clear message and a non-zero exit, never a
// crash; good input gives the documented JSON.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <atomic>
#include <csignal>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

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

// The prompt ids `generate --json` reports in its summary (embedded engine).
std::vector<int> GeneratePromptIds(const std::string& model, const std::string& flags) {
  Result r = RunMoectl("generate --model " + model + " --max-tokens 1 --temperature 0 --json " + flags);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  const std::string last = r.out.substr(r.out.rfind('\n', r.out.size() - 2) + 1);
  return nlohmann::json::parse(last)["prompt_ids"].get<std::vector<int>>();
}

std::vector<int> TokenizeChatIds(const std::string& model, const std::string& request) {
  Result r = RunMoectl("tokenize --chat --model " + model, request + "\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return nlohmann::json::parse(r.out)["ids"].get<std::vector<int>>();
}

TEST(MoectlTest, GenerateChatUsesTheTemplatesThinkingDefaultAsTokenizeDoes) {
  const std::string& model = testing::TestModelDir("tiny", "bf16");
  const std::vector<int> by_default = GeneratePromptIds(model, "--chat --prompt Hi");
  EXPECT_EQ(by_default, TokenizeChatIds(model, R"({"messages": [{"role": "user", "content": "Hi"}]})"));
  // <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n: thinking on, no empty think block.
  EXPECT_EQ(by_default.size(), 9u);
  const std::vector<int> off = GeneratePromptIds(model, "--chat --prompt Hi --no-thinking");
  EXPECT_EQ(
      off, TokenizeChatIds(model,
                           R"({"messages": [{"role": "user", "content": "Hi"}], "enable_thinking": false})"));
  EXPECT_EQ(off.size(), 13u);
  EXPECT_EQ(GeneratePromptIds(model, "--chat --prompt Hi --thinking"), by_default);
  EXPECT_EQ(
      GeneratePromptIds(model, "--chat --prompt Hi --system 'Be brief'"),
      TokenizeChatIds(
          model,
          R"({"messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}]})"));
}

TEST(MoectlTest, GenerateRouterNeedsAHostAndPort) {
  ExpectCleanFailure(RunMoectl("generate --router localhost --prompt hi"),
                     "--router: expected HOST:PORT, e.g. 127.0.0.1:50051");
}

TEST(MoectlTest, GenerateRouterErrorsNameTheGrpcCode) {
  // Nothing listens on port 1.
  Result r = RunMoectl("generate --router 127.0.0.1:1 --prompt hi");
  ExpectCleanFailure(r, "router 127.0.0.1:1: UNAVAILABLE: ");
  EXPECT_THAT(r.err, ::testing::Not(HasSubstr(": 14")));
}

TEST(MoectlTest, KvCacheGibTooSmallForOneBlockIsAClearError) {
  const std::string& model = testing::TestModelDir("tiny", "bf16");
  // tiny: 4 layers x 2 KV heads x 128 x 2 (K, V) x 2 bytes = 4 KiB per token, 4 MiB per block of 1024.
  ExpectCleanFailure(
      RunMoectl("logits --model " + model + " --ids 1 --kv-block-size 1024 --kv-cache-gib 0.001"),
      "holds no KV block (one block of 1024 tokens takes 4194304 bytes)");
}

TEST(MoectlTest, ProgressShowsModelLoadingWhenAsked) {
  const std::string& model = testing::TestModelDir("tiny", "bf16");
  Result quiet = RunMoectl("logits --model " + model + " --ids 1 --top 1");
  ASSERT_EQ(quiet.exit_code, 0) << quiet.err;
  EXPECT_EQ(quiet.err, "");  // stderr is a file, not a terminal
  Result shown = RunMoectl("logits --model " + model + " --ids 1 --top 1 --progress");
  ASSERT_EQ(shown.exit_code, 0) << shown.err;
  EXPECT_THAT(shown.err, HasSubstr("moectl logits: resolving dense weights: layer 4/4\n"));
  // The warm-up reports bytes and its rate; the last line is always shown.
  EXPECT_THAT(shown.err, ::testing::ContainsRegex(
                             "moectl logits: reading experts 0-127: MiB [0-9]+/[0-9]+, [0-9.]+ GB/s\n"));
  EXPECT_THAT(shown.err,
              ::testing::ContainsRegex("moectl logits: reading dense weights: MiB [0-9]+/[0-9]+, "));
  ExpectCleanFailure(RunMoectl("generate --model " + model + " --prompt hi --json --progress"), "excludes");
}

TEST(MoectlTest, MakeModelShowsProgressWhenAsked) {
  const std::string out = ::testing::TempDir() + "/moectl_make_model_progress";
  Result shown = RunMoectl("make-model --preset dense-tiny --out " + out + " --force --progress");
  ASSERT_EQ(shown.exit_code, 0) << shown.err;
  EXPECT_THAT(shown.err, HasSubstr("moectl make-model: writing weights (MiB) "));
  // The last update is always shown, and it is complete.
  const size_t last = shown.err.rfind("writing weights (MiB) ");
  ASSERT_NE(last, std::string::npos);
  const std::string tail = shown.err.substr(last + 22, shown.err.find('\n', last) - last - 22);
  const size_t slash = tail.find('/');
  ASSERT_NE(slash, std::string::npos) << tail;
  EXPECT_EQ(tail.substr(0, slash), tail.substr(slash + 1)) << shown.err;
  std::filesystem::remove_all(out);
}

// A listening socket on 127.0.0.1 (port chosen by the kernel), closed when the object goes.
class Listener {
 public:
  Listener() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (fd_ < 0 || bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 || listen(fd_, 1) != 0 ||
        getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ADD_FAILURE() << "cannot listen on 127.0.0.1";
      return;
    }
    port_ = ntohs(addr.sin_port);
  }
  ~Listener() {
    if (fd_ >= 0) close(fd_);
  }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

bool PortFree(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

// A base port below the ephemeral range with `count` free ports from it and from it + 1000 (the
// default metrics ports).
int FreePortBlock(int count) {
  std::mt19937 rng(static_cast<unsigned>(getpid()) * 104729u + static_cast<unsigned>(time(nullptr)));
  for (int attempt = 0; attempt < 200; ++attempt) {
    const int base = 10000 + static_cast<int>(rng() % 21000);
    bool ok = true;
    for (int i = 0; i < count && ok; ++i) ok = PortFree(base + i) && PortFree(base + 1000 + i);
    if (ok) return base;
  }
  ADD_FAILURE() << "no free port block";
  return -1;
}

TEST(MoectlTest, ClusterUpRefusesAPortInUse) {
  Listener taken;
  const std::string empty = testing::MakeTempDir("moectl-empty");
  Result r = RunMoectl("cluster up --detach --model " + empty + " --port " + std::to_string(taken.port()) +
                       " --state-dir " + testing::MakeTempDir("moectl-state"));
  ExpectCleanFailure(r, std::to_string(taken.port()) + " (router)");
  EXPECT_THAT(r.err, HasSubstr("already in use"));
}

TEST(MoectlTest, ClusterUpRefusesReplicasThatDoNotDivideTheExpertWorkers) {
  const std::string empty = testing::MakeTempDir("moectl-empty");
  Result r = RunMoectl("cluster up --detach --model " + empty + " --expert-workers 3 --expert-replicas 2" +
                       " --state-dir " + testing::MakeTempDir("moectl-state"));
  ExpectCleanFailure(r, "--expert-replicas 2: needs a multiple of 2 expert workers, --expert-workers is 3");
}

TEST(MoectlTest, ClusterUpRefusesABadDeviceBeforeStartingAnything) {
  const std::string empty = testing::MakeTempDir("moectl-empty");
  const std::string state = testing::MakeTempDir("moectl-state");
  Result bad = RunMoectl("cluster up --detach --model " + empty + " --device gpu --state-dir " + state);
  ExpectCleanFailure(bad, "--device: 'gpu' is not a device");
  // No machine has 1024 GPUs (and a machine without one, or a build without CUDA, has no cuda:N).
  Result missing =
      RunMoectl("cluster up --detach --model " + empty + " --device cuda:1023 --state-dir " + state);
  ExpectCleanFailure(missing, "FAILED_PRECONDITION");
  EXPECT_THAT(missing.err, HasSubstr("cuda:1023"));
  EXPECT_FALSE(fs::exists(fs::path(state) / "expert-0.log")) << "a child was started";
}

// --transport nccl goes through to the workers, but only with a cuda device: refused before any child
// starts with --device cpu, and an unknown data plane names the accepted ones.
TEST(MoectlTest, ClusterUpRefusesATransportTheDeviceCannotUseBeforeStartingAnything) {
  const std::string empty = testing::MakeTempDir("moectl-empty");
  const std::string state = testing::MakeTempDir("moectl-state");
  Result cpu = RunMoectl("cluster up --detach --model " + empty +
                         " --transport nccl --device cpu --state-dir " + state);
  ExpectCleanFailure(cpu, "--transport: nccl moves GPU memory and needs --device cuda");
  Result other = RunMoectl("cluster up --detach --model " + empty + " --transport rdma --state-dir " + state);
  ExpectCleanFailure(other, "--transport: 'rdma' is not a data plane; accepted: ucx, nccl");
  EXPECT_FALSE(fs::exists(fs::path(state) / "expert-0.log")) << "a child was started";
}

TEST(MoectlTest, ClusterUpFailureShowsTheChildsExitStatusAndLog) {
  // Every child fails to load a model directory without config.json.
  const std::string empty = testing::MakeTempDir("moectl-empty");
  const int port = FreePortBlock(3);
  Result r = RunMoectl("cluster up --detach --model " + empty + " --port " + std::to_string(port) +
                       " --state-dir " + testing::MakeTempDir("moectl-state"));
  ExpectCleanFailure(r, "exited (exit status 1); the last lines of ");
  EXPECT_THAT(r.err, HasSubstr("config.json"));
  EXPECT_THAT(r.err, HasSubstr("the cluster failed to start"));
}

TEST(MoectlTest, ClusterUpDetachReturnsOnceTheRouterServes) {
  const std::string& model = testing::TestModelDir("tiny", "fp8");
  const int port = FreePortBlock(3);
  const std::string state = testing::MakeTempDir("moectl-state");
  // --device cpu goes to every worker explicitly: a MOE_DEVICE the workers would refuse, inherited
  // from this environment, must lose to it.
  ASSERT_EQ(setenv("MOE_DEVICE", "not-a-device", 1), 0);
  Result up = RunMoectl("cluster up --detach --model " + model + " --port " + std::to_string(port) +
                        " --device cpu --state-dir " + state);
  unsetenv("MOE_DEVICE");
  ASSERT_EQ(up.exit_code, 0) << up.err;
  struct StopOnFailure {
    std::string state;
    bool stopped = false;
    ~StopOnFailure() {
      if (!stopped) RunMoectl("cluster down --state-dir " + state);
    }
  } guard{state};
  const std::string router = "127.0.0.1:" + std::to_string(port);
  EXPECT_EQ(up.out, router + "\n");
  EXPECT_THAT(up.err, HasSubstr("expert-0 ready ("));
  EXPECT_THAT(up.err, HasSubstr("attention-0 ready ("));
  EXPECT_THAT(up.err, HasSubstr("router ready (3/3)"));
  EXPECT_THAT(up.err, HasSubstr("ready: router " + router + " serving"));
  // At once, as the README's block does.
  Result generate = RunMoectl("generate --router " + router + " --prompt Hi --max-tokens 2 --temperature 0");
  EXPECT_EQ(generate.exit_code, 0) << generate.err;
  Result down = RunMoectl("cluster down --state-dir " + state);
  guard.stopped = true;
  EXPECT_EQ(down.exit_code, 0) << down.err;
}

// A child that dies after start-up is restarted (with a backoff), and the cluster serves again.
TEST(MoectlTest, ClusterUpRestartsAChildThatDies) {
  const std::string& model = testing::TestModelDir("tiny", "bf16");
  const int port = FreePortBlock(3);
  const std::string state = testing::MakeTempDir("moectl-state");
  Result up = RunMoectl("cluster up --detach --model " + model + " --port " + std::to_string(port) +
                        " --state-dir " + state + " --kv-cache-gib 0.25 --max-restarts 2");
  ASSERT_EQ(up.exit_code, 0) << up.err;
  struct StopAtEnd {
    std::string state;
    ~StopAtEnd() { RunMoectl("cluster down --state-dir " + state); }
  } guard{state};
  auto read_pid = [&](const std::string& name) {
    pid_t pid = 0;
    std::ifstream(state + "/" + name + ".pid") >> pid;
    return pid;
  };
  const pid_t expert = read_pid("expert-0");
  ASSERT_GT(expert, 0);
  ASSERT_EQ(kill(expert, SIGKILL), 0);
  const std::string router = "127.0.0.1:" + std::to_string(port);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  Result generate;
  do {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    generate = RunMoectl("generate --router " + router + " --prompt Hi --max-tokens 2 --temperature 0");
  } while ((generate.exit_code != 0 || read_pid("expert-0") == expert) &&
           std::chrono::steady_clock::now() < deadline);
  EXPECT_EQ(generate.exit_code, 0) << generate.err;
  EXPECT_NE(read_pid("expert-0"), expert);
  std::ifstream log(state + "/supervisor.log");
  std::stringstream text;
  text << log.rdbuf();
  EXPECT_THAT(text.str(), HasSubstr("restarting expert-0 in 1 s (restart 1 of at most 2)")) << text.str();
  EXPECT_THAT(text.str(), HasSubstr("expert-0 restarted (pid "));
  std::ifstream attention_log(state + "/attention-0.log");
  std::stringstream attention_text;
  attention_text << attention_log.rdbuf();
  EXPECT_THAT(attention_text.str(), HasSubstr("KV cache 0.25 GiB"));
}

TEST(MoectlTest, ClusterScaleWithoutARunningClusterIsAClearError) {
  const std::string state = testing::MakeTempDir("moectl-state");
  ExpectCleanFailure(RunMoectl("cluster scale --attention-workers 2 --state-dir " + state),
                     "no cluster is running");
  ExpectCleanFailure(RunMoectl("cluster scale --state-dir " + state), "give --attention-workers N");
  Result zero = RunMoectl("cluster scale --attention-workers 0 --state-dir " + state);
  EXPECT_NE(zero.exit_code, 0);
  EXPECT_THAT(zero.err, HasSubstr("--attention-workers"));
}

// `cluster scale` on a running cluster: more attention workers join the router, fewer leave it and
// exit; changing the expert workers is refused (issue 8 item 4); the cluster serves throughout.
// (Scaling under 32 streams with exact outputs: failover_test's ElasticAttentionWorkersTest.)
TEST(MoectlTest, ClusterScaleAddsAndRemovesAttentionWorkers) {
  const std::string& model = testing::TestModelDir("tiny", "bf16");
  const int port = FreePortBlock(3);
  const std::string state = testing::MakeTempDir("moectl-state");
  Result up = RunMoectl("cluster up --detach --model " + model + " --port " + std::to_string(port) +
                        " --state-dir " + state + " --kv-cache-gib 0.25");
  ASSERT_EQ(up.exit_code, 0) << up.err;
  struct StopAtEnd {
    std::string state;
    ~StopAtEnd() { RunMoectl("cluster down --state-dir " + state); }
  } guard{state};
  const std::string router = "127.0.0.1:" + std::to_string(port);
  auto read_pid = [&](const std::string& name) {
    pid_t pid = 0;
    std::ifstream(state + "/" + name + ".pid") >> pid;
    return pid;
  };
  auto generate_ok = [&] {
    Result g = RunMoectl("generate --router " + router + " --prompt Hi --max-tokens 2 --temperature 0");
    EXPECT_EQ(g.exit_code, 0) << g.err;
  };

  Result experts = RunMoectl("cluster scale --expert-workers 2 --state-dir " + state);
  ExpectCleanFailure(experts, "--expert-workers 2: at most 1 (1 home + 0 joinable)");
  EXPECT_THAT(experts.err, HasSubstr("--joinable-expert-workers"));
  EXPECT_EQ(RunMoectl("cluster scale --expert-workers 1 --state-dir " + state).exit_code, 0);

  // Clients stream all along (8 at a time, `generate --router` processes): none may fail.
  std::atomic<bool> scaling_done{false};
  std::atomic<int> generated{0};
  std::mutex failures_mu;
  std::vector<std::string> failures;
  std::vector<std::thread> clients;
  for (int c = 0; c < 8; ++c) {
    clients.emplace_back([&, c] {
      while (!scaling_done) {
        Result g = RunMoectl("generate --router " + router + " --prompt 'Hello " + std::to_string(c) +
                             "' --max-tokens 48 --temperature 0 --ignore-eos");
        ++generated;
        if (g.exit_code != 0) {
          std::lock_guard<std::mutex> lock(failures_mu);
          failures.push_back(g.err);
        }
      }
    });
  }
  struct JoinClients {
    std::atomic<bool>& done;
    std::vector<std::thread>& threads;
    ~JoinClients() {
      done = true;
      for (std::thread& t : threads) t.join();
    }
  } join_clients{scaling_done, clients};

  Result grow = RunMoectl("cluster scale --attention-workers 3 --state-dir " + state);
  ASSERT_EQ(grow.exit_code, 0) << grow.err;
  EXPECT_THAT(grow.err, HasSubstr("attention workers: 3 (were 1)"));
  const pid_t added = read_pid("attention-2");
  ASSERT_GT(added, 0);
  EXPECT_EQ(kill(added, 0), 0);
  std::ifstream file(state + "/attention_workers");
  std::stringstream listed;
  listed << file.rdbuf();
  EXPECT_THAT(listed.str(), HasSubstr("127.0.0.1:" + std::to_string(port + 1)));
  generate_ok();

  Result shrink = RunMoectl("cluster scale --attention-workers 1 --state-dir " + state);
  ASSERT_EQ(shrink.exit_code, 0) << shrink.err;
  EXPECT_THAT(shrink.err, HasSubstr("attention workers: 1 (were 3)"));
  EXPECT_NE(kill(added, 0), 0) << "attention-2 still runs";
  EXPECT_FALSE(std::filesystem::exists(state + "/attention-2.pid"));
  generate_ok();
  std::ifstream log(state + "/supervisor.log");
  std::stringstream text;
  text << log.rdbuf();
  EXPECT_THAT(text.str(), HasSubstr("stopping attention-2 (SIGTERM: its streams migrate)"));
  EXPECT_THAT(text.str(), ::testing::Not(HasSubstr("restarting attention-2")));
  scaling_done = true;
  for (std::thread& t : clients) t.join();
  clients.clear();
  EXPECT_GE(generated.load(), 8);  // every client finished at least one request while the cluster changed
  std::ifstream router_log(state + "/router.log");
  std::stringstream router_text;
  router_text << router_log.rdbuf();
  size_t migrated = 0;
  for (size_t at = router_text.str().find("migrating it with"); at != std::string::npos;
       at = router_text.str().find("migrating it with", at + 1))
    ++migrated;
  std::cerr << generated.load() << " generate calls while scaling, " << migrated << " stream(s) migrated\n";
  EXPECT_TRUE(failures.empty()) << failures.size() << " failed, the first: " << failures.front();
}

// `cluster scale --expert-workers` (docs/operations.md#scaling): an expert worker added to a running
// cluster joins the placement and one removed leaves it, while clients stream: none fails. The
// refusals name why.
TEST(MoectlTest, ClusterScaleAddsAndRemovesExpertWorkers) {
  const std::string& model = testing::TestModelDir("tiny", "bf16");
  const int port = FreePortBlock(5);
  const std::string state = testing::MakeTempDir("moectl-state");
  Result up =
      RunMoectl("cluster up --detach --model " + model + " --port " + std::to_string(port) + " --state-dir " +
                state + " --kv-cache-gib 0.25 --expert-workers 2 --joinable-expert-workers 1");
  ASSERT_EQ(up.exit_code, 0) << up.err;
  struct StopAtEnd {
    std::string state;
    ~StopAtEnd() { RunMoectl("cluster down --state-dir " + state); }
  } guard{state};
  const std::string router = "127.0.0.1:" + std::to_string(port);
  auto read_pid = [&](const std::string& name) {
    pid_t pid = 0;
    std::ifstream(state + "/" + name + ".pid") >> pid;
    return pid;
  };
  // <state>/expert_workers (what `cluster rebalance` reads): the running expert workers in rank order.
  auto expert_file = [&] {
    std::ifstream in(state + "/expert_workers");
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  };
  auto address = [&](int offset) { return "127.0.0.1:" + std::to_string(port + offset); };
  EXPECT_THAT(expert_file(), ::testing::ElementsAre(address(2), address(3)));
  ExpectCleanFailure(RunMoectl("cluster scale --expert-workers 4 --state-dir " + state),
                     "--expert-workers 4: at most 3 (2 home + 1 joinable)");
  // A home worker cannot go: with one replica it holds the only copy of its shard.
  Result below = RunMoectl("cluster scale --expert-workers 1 --state-dir " + state);
  ExpectCleanFailure(below, "--expert-workers 1: below the cluster's 2 home expert workers");
  EXPECT_THAT(below.err, HasSubstr("the last copy of its experts"));
  ExpectCleanFailure(RunMoectl("cluster scale --expert-workers 0 --state-dir " + state), "--expert-workers");

  std::atomic<bool> scaling_done{false};
  std::mutex failures_mu;
  std::vector<std::string> failures;
  std::vector<std::thread> clients;
  for (int c = 0; c < 8; ++c) {
    clients.emplace_back([&, c] {
      while (!scaling_done) {
        Result g = RunMoectl("generate --router " + router + " --prompt 'Hello " + std::to_string(c) +
                             "' --max-tokens 48 --temperature 0 --ignore-eos");
        if (g.exit_code != 0) {
          std::lock_guard<std::mutex> lock(failures_mu);
          failures.push_back(g.err);
        }
      }
    });
  }
  struct JoinClients {
    std::atomic<bool>& done;
    std::vector<std::thread>& threads;
    ~JoinClients() {
      done = true;
      for (std::thread& t : threads) t.join();
    }
  } join_clients{scaling_done, clients};

  Result grow = RunMoectl("cluster scale --expert-workers 3 --state-dir " + state);
  ASSERT_EQ(grow.exit_code, 0) << grow.err;
  EXPECT_THAT(grow.err, HasSubstr("expert workers: 3 (were 2; 2 home), placement version 1"));
  const pid_t added = read_pid("expert-2");
  ASSERT_GT(added, 0);
  EXPECT_EQ(kill(added, 0), 0);
  EXPECT_THAT(expert_file(), ::testing::ElementsAre(address(2), address(3), address(4)));
  // An attention worker added now gets the placement in use.
  Result attention = RunMoectl("cluster scale --attention-workers 2 --state-dir " + state);
  ASSERT_EQ(attention.exit_code, 0) << attention.err;
  Result shrink = RunMoectl("cluster scale --expert-workers 2 --attention-workers 1 --state-dir " + state);
  ASSERT_EQ(shrink.exit_code, 0) << shrink.err;
  EXPECT_THAT(shrink.err, HasSubstr("expert workers: 2 (were 3; 2 home), placement version 2"));
  EXPECT_NE(kill(added, 0), 0) << "expert-2 still runs";
  EXPECT_FALSE(std::filesystem::exists(state + "/expert-2.pid"));
  EXPECT_THAT(expert_file(), ::testing::ElementsAre(address(2), address(3)));
  std::ifstream log(state + "/supervisor.log");
  std::stringstream text;
  text << log.rdbuf();
  EXPECT_THAT(text.str(), HasSubstr("stopping expert-2 (out of the placement; SIGTERM)"));
  EXPECT_THAT(text.str(), ::testing::Not(HasSubstr("restarting expert-2")));
  scaling_done = true;
  for (std::thread& t : clients) t.join();
  clients.clear();
  EXPECT_TRUE(failures.empty()) << failures.size() << " failed, the first: " << failures.front();
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
