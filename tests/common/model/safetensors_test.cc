#include "common/model/safetensors.h"

#include <cstring>
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

// A raw file: u64 LE header length, header, data.
std::string RawFile(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(n >> (8 * i));
  return out + header + data;
}

void ExpectInvalid(const TempDir& dir, const std::string& bytes, const std::string& what) {
  const std::string path = dir.File("bad.safetensors");
  WriteFileBytes(path, bytes);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok()) << "expected: " << what;
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << f.status();
  EXPECT_THAT(f.status().message(), HasSubstr(path));
  EXPECT_THAT(f.status().message(), HasSubstr(what));
}

TEST(SafetensorsTest, RoundTripsTensorsAndMetadata) {
  TempDir dir;
  const std::string path = dir.File("a.safetensors");
  std::vector<TensorToWrite> tensors = {
      BytesTensor("b", DType::kBF16, {2, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}),
      BytesTensor("a.scalar", DType::kF32, {}, {0, 0, 128, 63}),
      BytesTensor("empty", DType::kF8E4M3, {0, 4}, {}),
      BytesTensor("c", DType::kU8, {3}, {7, 8, 9}),
  };
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  const auto& t = (*f)->tensors();
  ASSERT_EQ(t.size(), 4u);
  EXPECT_EQ(t.at("b").dtype, DType::kBF16);
  EXPECT_THAT(t.at("b").shape, ElementsAre(2, 3));
  const auto* b = static_cast<const uint8_t*>(t.at("b").data);
  EXPECT_EQ(std::vector<uint8_t>(b, b + 12), (std::vector<uint8_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}));
  float scalar;
  std::memcpy(&scalar, t.at("a.scalar").data, 4);
  EXPECT_EQ(scalar, 1.0f);
  EXPECT_TRUE(t.at("a.scalar").shape.empty());
  EXPECT_EQ(t.at("empty").NumBytes(), 0u);
  EXPECT_EQ(static_cast<const uint8_t*>(t.at("c").data)[2], 9);
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
  // Data starts 8-byte aligned: the header is space-padded.
  const std::string bytes = testing::ReadFileBytes(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + header_len + 12 + 4 + 3);
}

TEST(SafetensorsTest, WriterRejectsDuplicateNames) {
  TempDir dir;
  absl::Status s = WriteSafetensors(dir.File("d.safetensors"), {BytesTensor("x", DType::kU8, {1}, {1}),
                                                                BytesTensor("x", DType::kU8, {1}, {2})});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
}

TEST(SafetensorsTest, MissingFileIsNotFound) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(dir.File("nope.safetensors"));
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
}

TEST(SafetensorsTest, RejectsFileShorterThanLengthPrefix) {
  TempDir dir;
  ExpectInvalid(dir, std::string(5, '\0'), "shorter than the 8-byte header length");
}

TEST(SafetensorsTest, RejectsHeaderLengthPastEndOfFile) {
  TempDir dir;
  std::string bytes = RawFile("{}", "");
  bytes[0] = 100;  // claims 100 header bytes, has 2
  ExpectInvalid(dir, bytes, "runs past the end of the file");
}

TEST(SafetensorsTest, RejectsHeaderOver100MB) {
  TempDir dir;
  std::string bytes = RawFile("{}", "");
  const uint64_t n = kMaxSafetensorsHeaderBytes + 1;
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(n >> (8 * i));
  ExpectInvalid(dir, bytes, "exceeds the 100 MB limit");
}

TEST(SafetensorsTest, RejectsBadJson) {
  TempDir dir;
  ExpectInvalid(dir, RawFile("{\"a\": {", ""), "not valid JSON");
  ExpectInvalid(dir, RawFile("[1, 2]", ""), "not a JSON object");
}

TEST(SafetensorsTest, RejectsUnknownDtype) {
  TempDir dir;
  ExpectInvalid(dir, RawFile(R"({"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}})", "x"),
                "unknown dtype 'F4'");
}

TEST(SafetensorsTest, RejectsShapeByteSizeMismatch) {
  TempDir dir;
  ExpectInvalid(dir,
                RawFile(R"({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 6]}})", "123456"),
                "needs 8 bytes but data_offsets span 6");
}

TEST(SafetensorsTest, RejectsMalformedEntries) {
  TempDir dir;
  ExpectInvalid(dir, RawFile(R"({"w": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}})", "x"),
                "shape must be a list of non-negative integers");
  ExpectInvalid(dir, RawFile(R"({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0]}})", "x"),
                "data_offsets must be [begin, end]");
  ExpectInvalid(dir, RawFile(R"({"w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 0]}})", "x"),
                "begin > end");
  ExpectInvalid(dir, RawFile(R"({"w": 3})", ""), "entry is not an object");
  ExpectInvalid(dir, RawFile(R"({"__metadata__": {"a": 1}})", ""), "is not a string");
  // A shape whose byte size overflows 64 bits must not wrap around to a small number.
  ExpectInvalid(
      dir,
      RawFile(R"({"w": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 0]}})", ""),
      "shape is too large");
}

TEST(SafetensorsTest, RejectsOffsetsOutOfRange) {
  TempDir dir;
  ExpectInvalid(dir, RawFile(R"({"w": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}})", "abcd"),
                "is past the data buffer (4 bytes)");
}

TEST(SafetensorsTest, RejectsOverlappingTensors) {
  TempDir dir;
  ExpectInvalid(dir,
                RawFile(R"({"a": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
                           "b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}})",
                        "abcd"),
                "overlaps");
}

TEST(SafetensorsTest, RejectsGapsAndTrailingBytes) {
  TempDir dir;
  ExpectInvalid(dir,
                RawFile(R"({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                           "b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}})",
                        "abcd"),
                "gap of 1 bytes");
  ExpectInvalid(dir, RawFile(R"({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}})", "abcd"),
                "2 trailing bytes");
}

TEST(SafetensorsTest, RejectsTruncatedFile) {
  TempDir dir;
  const std::string path = dir.File("t.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {BytesTensor("w", DType::kF32, {4}, std::vector<uint8_t>(16, 1))}).ok());
  std::string bytes = testing::ReadFileBytes(path);
  bytes.resize(bytes.size() - 3);
  ExpectInvalid(dir, bytes, "is past the data buffer");
}

}  // namespace
}  // namespace moe::model
