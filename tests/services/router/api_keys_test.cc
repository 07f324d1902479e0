// API keys of the public edge: the file format, constant-time comparison, Authenticate, reload.
#include "services/router/api_keys.h"

#include <sys/stat.h>

#include <fstream>
#include <string>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/util/test_models.h"

namespace moe::router {
namespace {

constexpr char kKeyA[] = "sk-aaaaaaaaaaaaaaaaaaaaaaaa";
constexpr char kKeyB[] = "sk-bbbbbbbbbbbbbbbbbbbbbbbb";

void Write(const std::string& path, const std::string& contents) {
  std::ofstream(path, std::ios::trunc) << contents;
}

TEST(ApiKeysTest, ParsesNamedAndUnnamedKeysSkippingCommentsAndBlankLines) {
  auto keys = ParseApiKeys(std::string("# keys\n\nalice ") + kKeyA + "\n  " + kKeyB + "  \n");
  ASSERT_TRUE(keys.ok()) << keys.status();
  ASSERT_EQ(keys->size(), 2u);
  EXPECT_EQ((*keys)[0].name, "alice");
  EXPECT_EQ((*keys)[0].key, kKeyA);
  EXPECT_EQ((*keys)[1].name, "key-4");
  EXPECT_EQ((*keys)[1].key, kKeyB);
}

TEST(ApiKeysTest, RefusesMalformedFilesNamingTheLine) {
  for (const std::string& bad :
       {std::string("alice short\n"), std::string("a b c\n"), std::string("al/ice ") + kKeyA + "\n",
        std::string("x ") + kKeyA + "\nx " + kKeyB + "\n"}) {
    auto keys = ParseApiKeys(bad);
    ASSERT_FALSE(keys.ok()) << bad;
    EXPECT_EQ(keys.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(keys.status().message().find("line "), std::string::npos) << keys.status();
  }
  EXPECT_FALSE(ParseApiKeys("# nothing\n\n").ok());
}

TEST(ApiKeysTest, ConstantTimeEqualsIsExactEquality) {
  EXPECT_TRUE(ConstantTimeEquals("abcdef", "abcdef"));
  EXPECT_FALSE(ConstantTimeEquals("abcdef", "abcdeg"));
  EXPECT_FALSE(ConstantTimeEquals("abcdef", "abcde"));  // a prefix
  EXPECT_FALSE(ConstantTimeEquals("abc", "abcabc"));    // a repetition
  EXPECT_FALSE(ConstantTimeEquals("abc", ""));
  EXPECT_FALSE(ConstantTimeEquals("", "abc"));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
}

TEST(ApiKeysTest, AuthenticatesBearerKeysByName) {
  const std::string path = testing::MakeTempDir("api_keys") + "/keys";
  Write(path, std::string("alice ") + kKeyA + "\nbob " + kKeyB + "\n");
  auto store = ApiKeyStore::Load(path);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(*(*store)->Authenticate(std::string("Bearer ") + kKeyB), "bob");
  EXPECT_EQ(*(*store)->Authenticate(std::string("bearer ") + kKeyA), "alice");
  for (const std::string& bad :
       {std::string(""), std::string("Bearer "), std::string(kKeyA), std::string("Basic ") + kKeyA,
        std::string("Bearer ") + kKeyA + "x", std::string("Bearer sk-aaaa")}) {
    auto name = (*store)->Authenticate(bad);
    ASSERT_FALSE(name.ok()) << bad;
    EXPECT_EQ(name.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(name.status().message().find(kKeyA), std::string::npos) << "a key is echoed";
  }
}

TEST(ApiKeysTest, MissingOrMalformedFileIsRefusedNamingThePath) {
  const std::string dir = testing::MakeTempDir("api_keys");
  auto missing = ApiKeyStore::Load(dir + "/none");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(dir + "/none"), std::string::npos);
  Write(dir + "/bad", "x y z\n");
  auto bad = ApiKeyStore::Load(dir + "/bad");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ApiKeysTest, ReloadsAChangedFileAndKeepsTheOldKeysWhenTheNewFileIsBad) {
  const std::string dir = testing::MakeTempDir("api_keys");
  const std::string path = dir + "/keys";
  Write(path, std::string("alice ") + kKeyA + "\n");
  auto loaded = ApiKeyStore::Load(path);
  ASSERT_TRUE(loaded.ok());
  ApiKeyStore& store = **loaded;
  ASSERT_TRUE(store.Authenticate(std::string("Bearer ") + kKeyA).ok());

  // Replace the file the way a Secret volume does (a new inode), with another key.
  Write(dir + "/keys.new", std::string("bob ") + kKeyB + "\n");
  ASSERT_EQ(std::rename((dir + "/keys.new").c_str(), path.c_str()), 0);
  store.ReloadIfChanged();
  EXPECT_FALSE(store.Authenticate(std::string("Bearer ") + kKeyA).ok());
  EXPECT_EQ(*store.Authenticate(std::string("Bearer ") + kKeyB), "bob");

  // A broken file is not taken: bob's key keeps working.
  Write(dir + "/keys.new", "too short\n");
  ASSERT_EQ(std::rename((dir + "/keys.new").c_str(), path.c_str()), 0);
  store.ReloadIfChanged();
  EXPECT_EQ(*store.Authenticate(std::string("Bearer ") + kKeyB), "bob");
  EXPECT_EQ(store.num_keys(), 1u);

  // Authenticate itself notices a change (checks at most once a second).
  Write(dir + "/keys.new", std::string("carol ") + kKeyA + "\n");
  ASSERT_EQ(std::rename((dir + "/keys.new").c_str(), path.c_str()), 0);
  absl::SleepFor(absl::Milliseconds(1100));
  EXPECT_EQ(*store.Authenticate(std::string("Bearer ") + kKeyA), "carol");
}

}  // namespace
}  // namespace moe::router
