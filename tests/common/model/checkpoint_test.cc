#include "common/model/checkpoint.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/model/test_util.h"

namespace moe::model {
namespace {

using testing::BytesTensor;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::TempDir;
using testing::WriteFileBytes;

TEST(CheckpointTest, OpensSingleFile) {
  TempDir dir;
  ASSERT_TRUE(WriteSafetensors(dir.File("model.safetensors"), {BytesTensor("b", DType::kU8, {2}, {1, 2}),
                                                               BytesTensor("a", DType::kU8, {1}, {3})})
                  .ok());
  absl::StatusOr<std::unique_ptr<Checkpoint>> c = Checkpoint::Open(dir.path());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT((*c)->TensorNames(), ElementsAre("a", "b"));
  EXPECT_TRUE((*c)->Contains("a"));
  absl::StatusOr<TensorView> b = (*c)->Get("b");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(static_cast<const uint8_t*>(b->data)[1], 2);
  absl::StatusOr<TensorView> missing = (*c)->Get("zzz");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("'zzz'"));
}

TEST(CheckpointTest, OpensShardsThroughIndex) {
  TempDir dir;
  ASSERT_TRUE(WriteSafetensors(dir.File("model-00001-of-00002.safetensors"),
                               {BytesTensor("x", DType::kU8, {1}, {10})})
                  .ok());
  ASSERT_TRUE(WriteSafetensors(dir.File("model-00002-of-00002.safetensors"),
                               {BytesTensor("y", DType::kU8, {2}, {20, 21})})
                  .ok());
  WriteFileBytes(dir.File("model.safetensors.index.json"),
                 R"({"metadata": {"total_size": 3}, "weight_map": {"x": "model-00001-of-00002.safetensors",
                    "y": "model-00002-of-00002.safetensors"}})");
  absl::StatusOr<std::unique_ptr<Checkpoint>> c = Checkpoint::Open(dir.path());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT((*c)->TensorNames(), ElementsAre("x", "y"));
  EXPECT_EQ(static_cast<const uint8_t*>((*c)->Get("y")->data)[1], 21);
  EXPECT_EQ(static_cast<const uint8_t*>((*c)->Get("x")->data)[0], 10);
}

TEST(CheckpointTest, RejectsIndexNamingMissingShard) {
  TempDir dir;
  WriteFileBytes(dir.File("model.safetensors.index.json"),
                 R"({"weight_map": {"x": "model-00001-of-00001.safetensors"}})");
  absl::StatusOr<std::unique_ptr<Checkpoint>> c = Checkpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr("model-00001-of-00001.safetensors"));
}

TEST(CheckpointTest, RejectsIndexNamingTensorAbsentFromShard) {
  TempDir dir;
  ASSERT_TRUE(WriteSafetensors(dir.File("s.safetensors"), {BytesTensor("x", DType::kU8, {1}, {1})}).ok());
  WriteFileBytes(dir.File("model.safetensors.index.json"),
                 R"({"weight_map": {"x": "s.safetensors", "q": "s.safetensors"}})");
  absl::StatusOr<std::unique_ptr<Checkpoint>> c = Checkpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("'q' in s.safetensors, which does not contain it"));
}

TEST(CheckpointTest, RejectsMalformedIndex) {
  TempDir dir;
  WriteFileBytes(dir.File("model.safetensors.index.json"), R"({"metadata": {}})");
  EXPECT_THAT(Checkpoint::Open(dir.path()).status().message(), HasSubstr("missing weight_map"));
  WriteFileBytes(dir.File("model.safetensors.index.json"), R"({"weight_map": {"x": "../evil.safetensors"}})");
  EXPECT_THAT(Checkpoint::Open(dir.path()).status().message(),
              HasSubstr("not a file in the model directory"));
  WriteFileBytes(dir.File("model.safetensors.index.json"), "{not json");
  EXPECT_EQ(Checkpoint::Open(dir.path()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CheckpointTest, EmptyDirectoryIsNotFound) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<Checkpoint>> c = Checkpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
}

TEST(CheckpointTest, CorruptShardNamesTheFile) {
  TempDir dir;
  WriteFileBytes(dir.File("model.safetensors"), "abc");
  absl::StatusOr<std::unique_ptr<Checkpoint>> c = Checkpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("model.safetensors"));
}

}  // namespace
}  // namespace moe::model
