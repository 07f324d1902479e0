// The CUDA kernels' host-side logic, without a GPU: arguments are checked (INVALID_ARGUMENT naming
// the argument) before anything reaches CUDA, a missing device is a clear FAILED_PRECONDITION, and
// the FP8 weight scales are packed into cuBLASLt's layout.
#include <vector>

#include "common/kernels/cuda/cuda_kernels.h"
#include "gtest/gtest.h"

namespace moe::kernels::cuda {
namespace {

// A non-null pointer that no kernel may ever see: the checks reject the call first (it is host
// memory, so a launch with it would fail).
template <typename T>
T* Fake() {
  alignas(256) static unsigned char storage[256];
  return reinterpret_cast<T*>(storage);
}

void ExpectInvalid(const absl::Status& status, absl::string_view needle) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find(needle), absl::string_view::npos) << status << " lacks '" << needle << "'";
}

TEST(CudaHostTest, MissingDeviceIsAClearError) {
  const absl::StatusOr<int> count = DeviceCount();
  // cuda:7 on this machine: either no CUDA at all, or fewer than 8 devices (or, on a big node,
  // a real device, which this test cannot tell apart from success).
  const absl::Status status = CheckDevice(7, "--device");
  if (!count.ok()) {
    EXPECT_EQ(count.status().code(), absl::StatusCode::kFailedPrecondition) << count.status();
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
    EXPECT_NE(status.message().find("--device: cuda:7 is not available"), absl::string_view::npos) << status;
    EXPECT_FALSE(SetDevice(0).ok());
    EXPECT_FALSE(Blas::Create().ok());
  } else if (*count <= 7) {
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
    EXPECT_NE(status.message().find("--device: cuda:7 does not exist: this machine has"),
              absl::string_view::npos)
        << status;
  }
  EXPECT_EQ(CheckDevice(-1).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CudaHostTest, ElementwiseArgumentsAreChecked) {
  bf16* p = Fake<bf16>();
  ExpectInvalid(RmsNorm(p, 64, 2, 0, p, 1e-6f, p, 64, nullptr), "dim must be positive");
  ExpectInvalid(RmsNorm(p, 32, 2, 64, p, 1e-6f, p, 64, nullptr),
                "x_stride (32) is smaller than the row width 64");
  ExpectInvalid(RmsNorm(nullptr, 64, 2, 64, p, 1e-6f, p, 64, nullptr), "cuda::RmsNorm: x is null");
  ExpectInvalid(RmsNorm(p, 64, -1, 64, p, 1e-6f, p, 64, nullptr), "num_rows must be >= 0");
  ExpectInvalid(RmsNorm(p, 64, 1, 64, p, -1.0f, p, 64, nullptr), "eps");
  EXPECT_TRUE(RmsNorm(nullptr, 64, 0, 64, nullptr, 1e-6f, nullptr, 64, nullptr).ok())
      << "no rows: nothing to do";
  ExpectInvalid(HeadRmsNorm(p, 100, 2, 4, 32, p, 1e-6f, nullptr),
                "x_stride (100) is smaller than the row width 128");
  ExpectInvalid(ApplyRope(p, 128, 1, 1, Fake<int64_t>(), DeviceRopeTable{p, p, 127, 10}, nullptr),
                "table.head_dim must be even");
  ExpectInvalid(ApplyRope(p, 128, 1, 1, nullptr, DeviceRopeTable{p, p, 128, 10}, nullptr),
                "positions is null");
  ExpectInvalid(Add(p, nullptr, 4, p, nullptr), "b is null");
  ExpectInvalid(SiluMul(p, p, -4, p, nullptr), "n must be >= 0");
  ExpectInvalid(TopKSoftmax(p, 1, 2048, 8, true, Fake<int32_t>(), Fake<float>(), nullptr),
                "num_experts must be <= 1024");
  ExpectInvalid(TopKSoftmax(p, 1, 128, 0, true, Fake<int32_t>(), Fake<float>(), nullptr),
                "k must be positive");
  ExpectInvalid(Embed(p, 0, 64, Fake<int32_t>(), 1, p, nullptr), "vocab must be positive");
  ExpectInvalid(QuantizeFp8PerToken(p, 256, 3, 256, Fake<uint8_t>(), 256, Fake<float>(), 2, nullptr),
                "scale_ld (2) is smaller than the row width 3");
}

TEST(CudaHostTest, AttentionArgumentsAreChecked) {
  bf16* p = Fake<bf16>();
  const DevicePagedKv kv{p, p, /*num_blocks=*/4, /*block_size=*/16, /*num_kv_heads=*/4, /*head_dim=*/128};
  ExpectInvalid(PagedAttention(p, 6 * 128, 1, 0, 6, 0.1f, Fake<int32_t>(), 4, kv, p, 6 * 128, nullptr),
                "num_heads (6) is not a multiple of kv.num_kv_heads (4)");
  ExpectInvalid(PagedAttention(p, 8 * 128, 1, 40, 8, 0.1f, Fake<int32_t>(), 2, kv, p, 8 * 128, nullptr),
                "block_table_len (2) covers fewer than the 3 blocks positions 0..40 need");
  ExpectInvalid(PagedAttention(p, 8 * 128, 1, 0, 8, 0.1f, Fake<int32_t>(), 4,
                               DevicePagedKv{p, p, 4, 16, 4, 512}, p, 8 * 512, nullptr),
                "kv.head_dim must be <= 256");
  ExpectInvalid(PagedAttention(p, 8 * 128, 1, 0, 8, 0.1f, Fake<int32_t>(), 4,
                               DevicePagedKv{p, nullptr, 4, 16, 4, 128}, p, 8 * 128, nullptr),
                "kv.v is null");
  ExpectInvalid(PagedAttentionBatch(p, 8 * 128, 2, 8, 0.1f, Fake<int32_t>(), nullptr, 40, Fake<int32_t>(), 4,
                                    kv, p, 8 * 128, nullptr),
                "cuda::PagedAttentionBatch: token_pos is null");
  ExpectInvalid(PagedAttentionBatch(p, 8 * 128, 2, 8, 0.1f, Fake<int32_t>(), Fake<int32_t>(), 0,
                                    Fake<int32_t>(), 4, kv, p, 8 * 128, nullptr),
                "max_len must be positive");
  ExpectInvalid(PagedAttentionBatch(p, 8 * 128, 2, 6, 0.1f, Fake<int32_t>(), Fake<int32_t>(), 40,
                                    Fake<int32_t>(), 4, kv, p, 6 * 128, nullptr),
                "num_heads (6) is not a multiple of kv.num_kv_heads (4)");
  ExpectInvalid(WriteKv(p, 100, p, 512, 1, 0, Fake<int32_t>(), kv, nullptr),
                "k_stride (100) is smaller than the row width 512");
}

TEST(CudaHostTest, PacksWeightScalesKBlockMajorPaddedToFour) {
  // 300 x 260: 3 x 3 blocks of 128; the packed leading dimension is 4.
  std::vector<float> scale_inv(9);
  for (int i = 0; i < 9; ++i) scale_inv[i] = static_cast<float>(i + 1);  // [nb][kb] = 3 nb + kb + 1
  EXPECT_EQ(ScaleLeadingDim(3), 4);
  EXPECT_EQ(ScaleLeadingDim(4), 4);
  EXPECT_EQ(ScaleLeadingDim(5), 8);
  ASSERT_EQ(PackedWeightScaleCount(300, 260), 12);
  std::vector<float> packed(12, -1.0f);
  PackWeightScales(scale_inv.data(), 300, 260, packed.data());
  const std::vector<float> expected = {1, 4, 7, 0, 2, 5, 8, 0, 3, 6, 9, 0};
  EXPECT_EQ(packed, expected);
}

}  // namespace
}  // namespace moe::kernels::cuda
