// moectl's generation flags: one definition, parsed by CLI11, converted once into the embedded
// engine's request and once into the router's.
#include "tools/moectl/generation_flags.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#ifdef MOE_MOECTL_WITH_CLUSTER
#include "tools/moectl/router_generate.h"
#endif

namespace moe::moectl {
namespace {

// Parses `args` (after the program name) into a fresh GenerationFlags.
GenerationFlags Parse(std::vector<std::string> args) {
  CLI::App app;
  GenerationFlags flags;
  flags.Register(&app);
  std::vector<const char*> argv{"generate"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  app.parse(static_cast<int>(argv.size()), argv.data());
  return flags;
}

TEST(GenerationFlagsTest, ThinkingIsTheTemplatesDefaultUnlessAFlagSaysOtherwise) {
  EXPECT_EQ(Parse({"--prompt", "Hi", "--chat"}).ChatOptions().enable_thinking, std::nullopt);
  EXPECT_EQ(Parse({"--prompt", "Hi", "--chat", "--thinking"}).ChatOptions().enable_thinking, true);
  EXPECT_EQ(Parse({"--prompt", "Hi", "--chat", "--no-thinking"}).ChatOptions().enable_thinking, false);
}

TEST(GenerationFlagsTest, ThinkingAndNoThinkingExcludeEachOther) {
  EXPECT_THROW(Parse({"--prompt", "Hi", "--thinking", "--no-thinking"}), CLI::ExcludesError);
}

TEST(GenerationFlagsTest, UnsetSamplingFlagsStayUnset) {
  const GenerationFlags flags = Parse({"--prompt", "Hi"});
  EXPECT_FALSE(flags.sampling.temperature);
  EXPECT_FALSE(flags.sampling.top_k);
  EXPECT_FALSE(flags.sampling.top_p);
  EXPECT_FALSE(flags.sampling.min_p);
  EXPECT_FALSE(flags.sampling.repetition_penalty);
  EXPECT_FALSE(flags.sampling.presence_penalty);
  EXPECT_FALSE(flags.sampling.frequency_penalty);
  EXPECT_FALSE(flags.sampling.seed);
}

const std::vector<std::string> kEveryFlag = {"--prompt",
                                             "Hi",
                                             "--chat",
                                             "--system",
                                             "Be brief",
                                             "--no-thinking",
                                             "--max-tokens",
                                             "7",
                                             "--min-tokens",
                                             "2",
                                             "--temperature",
                                             "0.5",
                                             "--top-p",
                                             "0.75",
                                             "--top-k",
                                             "20",
                                             "--min-p",
                                             "0.125",
                                             "--repetition-penalty",
                                             "1.25",
                                             "--presence-penalty",
                                             "-0.5",
                                             "--frequency-penalty",
                                             "0.75",
                                             "--seed",
                                             "42",
                                             "--ignore-eos",
                                             "--logprobs",
                                             "3"};

TEST(GenerationFlagsTest, EveryFlagReachesTheEngineRequest) {
  const GenerationFlags flags = Parse(kEveryFlag);
  EXPECT_EQ(*flags.sampling.temperature, 0.5);
  EXPECT_EQ(*flags.sampling.top_p, 0.75);
  EXPECT_EQ(*flags.sampling.top_k, 20);
  EXPECT_EQ(*flags.sampling.min_p, 0.125);
  EXPECT_EQ(*flags.sampling.repetition_penalty, 1.25);
  EXPECT_EQ(*flags.sampling.presence_penalty, -0.5);
  EXPECT_EQ(*flags.sampling.frequency_penalty, 0.75);
  EXPECT_EQ(*flags.sampling.seed, 42u);
  request::SamplingParams resolved;
  resolved.temperature = 0.5f;
  const engine::GenerationRequest request = flags.ToEngineRequest("r", {1, 2, 3}, resolved);
  EXPECT_EQ(request.id, "r");
  EXPECT_EQ(request.prompt, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(request.sampling.temperature, 0.5f);
  EXPECT_EQ(request.max_new_tokens, 7);
  EXPECT_EQ(request.min_new_tokens, 2);
  EXPECT_TRUE(request.ignore_eos);
  EXPECT_EQ(request.top_logprobs, 3);
  const std::vector<tokenizer::ChatMessage> messages = flags.ChatMessages();
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[0].role, "system");
  EXPECT_EQ(messages[0].content, "Be brief");
  EXPECT_EQ(messages[1].role, "user");
  EXPECT_EQ(messages[1].content, "Hi");
}

#ifdef MOE_MOECTL_WITH_CLUSTER
TEST(GenerationFlagsTest, EveryFlagReachesTheRouterRequest) {
  const moe::v1::GenerateRequest request = ToGenerateRequest(Parse(kEveryFlag));
  ASSERT_TRUE(request.has_chat());
  ASSERT_EQ(request.chat().messages_size(), 2);
  EXPECT_EQ(request.chat().messages(0).role(), "system");
  EXPECT_EQ(request.chat().messages(0).content(), "Be brief");
  EXPECT_EQ(request.chat().messages(1).role(), "user");
  EXPECT_EQ(request.chat().messages(1).content(), "Hi");
  ASSERT_TRUE(request.chat().has_enable_thinking());
  EXPECT_FALSE(request.chat().enable_thinking());
  const moe::v1::SamplingParams& s = request.sampling();
  EXPECT_EQ(s.temperature(), 0.5f);
  EXPECT_EQ(s.top_p(), 0.75f);
  EXPECT_EQ(s.top_k(), 20);
  EXPECT_EQ(s.min_p(), 0.125f);
  EXPECT_EQ(s.repetition_penalty(), 1.25f);
  EXPECT_EQ(s.presence_penalty(), -0.5f);
  EXPECT_EQ(s.frequency_penalty(), 0.75f);
  EXPECT_EQ(s.seed(), 42u);
  EXPECT_EQ(s.max_new_tokens(), 7);
  EXPECT_EQ(s.min_new_tokens(), 2);
  EXPECT_TRUE(s.ignore_eos());
  EXPECT_EQ(request.logprobs(), 3);
}

TEST(GenerationFlagsTest, TheRouterRequestLeavesUnsetOverridesAndThinkingAbsent) {
  const moe::v1::GenerateRequest chat = ToGenerateRequest(Parse({"--prompt", "Hi", "--chat"}));
  EXPECT_FALSE(chat.chat().has_enable_thinking());
  EXPECT_FALSE(chat.sampling().has_temperature());
  EXPECT_FALSE(chat.sampling().has_top_p());
  EXPECT_FALSE(chat.sampling().has_top_k());
  EXPECT_FALSE(chat.sampling().has_seed());
  const moe::v1::GenerateRequest text = ToGenerateRequest(Parse({"--prompt", "Hi"}));
  EXPECT_EQ(text.text(), "Hi");
  EXPECT_FALSE(text.has_chat());
}

TEST(RouterAddressTest, RequiresHostAndPort) {
  EXPECT_EQ(*ParseRouterAddress("127.0.0.1:50051"), "127.0.0.1:50051");
  EXPECT_EQ(*ParseRouterAddress("localhost:8000"), "localhost:8000");
  EXPECT_EQ(*ParseRouterAddress("[::1]:50051"), "[::1]:50051");
  EXPECT_EQ(*ParseRouterAddress("unix:/tmp/router.sock"), "unix:/tmp/router.sock");
  for (const char* bad : {"localhost", "localhost:", ":50051", "::1", "host:port", "host:0", "host:70000"}) {
    const auto parsed = ParseRouterAddress(bad);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(parsed.status().message().find("expected HOST:PORT"), std::string::npos) << parsed.status();
  }
}

TEST(RouterAddressTest, ErrorsNameTheCodeNotItsNumber) {
  EXPECT_EQ(DescribeRouterError(grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection refused"), "h:1"),
            "router h:1: UNAVAILABLE: connection refused (is a cluster serving there? `moectl cluster up "
            "--detach` starts one)");
  EXPECT_EQ(DescribeRouterError(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "top_p"), "h:1"),
            "router h:1: INVALID_ARGUMENT: top_p");
}
#endif

}  // namespace
}  // namespace moe::moectl
