#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "common/kernels/cpu/cpu_features.h"
#include "common/kernels/cpu/kernels.h"
#include "common/kernels/cpu/linear_internal.h"
#include "common/kernels/cpu/thread_pool.h"
#include "common/tensor/fp8.h"
#include "gtest/gtest.h"
#include "tests/common/kernels/cpu/test_util.h"

namespace moe::kernels::cpu {
namespace {

using testing::FirstDifference;
using testing::RandomBf16;
using testing::SameBits;

// Owns the storage behind a LinearWeight.
struct TestWeight {
  std::vector<bf16> bf16_data;
  std::vector<uint8_t> fp8_data;
  std::vector<float> scale_inv;
  LinearWeight w;
};

TestWeight MakeBf16Weight(int64_t n, int64_t k, uint32_t seed) {
  TestWeight t;
  t.bf16_data = RandomBf16(n * k, seed, 0.05f);
  t.w = LinearWeight{DType::kBF16, n, k, t.bf16_data.data(), nullptr};
  return t;
}

TestWeight MakeFp8Weight(int64_t n, int64_t k, uint32_t seed) {
  TestWeight t;
  std::mt19937 rng(seed);
  t.fp8_data.resize(n * k);
  for (uint8_t& c : t.fp8_data) {
    do {
      c = static_cast<uint8_t>(rng() & 0xff);
    } while ((c & 0x7f) == 0x7f);  // no NaN codes in real checkpoints
  }
  t.w = LinearWeight{DType::kF8E4M3, n, k, nullptr, nullptr};
  t.scale_inv.resize(t.w.ScaleRows() * t.w.ScaleCols());
  std::uniform_real_distribution<float> dist(1e-4f, 2e-3f);
  for (float& s : t.scale_inv) s = dist(rng);
  t.w.data = t.fp8_data.data();
  t.w.scale_inv = t.scale_inv.data();
  return t;
}

// Straightforward double reference of y = x W^T for bf16 weights; also returns sum |x*w| per
// output for the error bound.
void ReferenceBf16(const std::vector<bf16>& x, int64_t m, const TestWeight& t, std::vector<double>* y,
                   std::vector<double>* magnitude) {
  const int64_t n = t.w.out_features, k = t.w.in_features;
  y->assign(m * n, 0.0);
  magnitude->assign(m * n, 0.0);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t c = 0; c < n; ++c)
      for (int64_t i = 0; i < k; ++i) {
        const double p = static_cast<double>(BF16ToFloat(x[r * k + i])) * BF16ToFloat(t.bf16_data[c * k + i]);
        (*y)[r * n + c] += p;
        (*magnitude)[r * n + c] += std::fabs(p);
      }
}

// transformers' FP8Linear in double, with the library's (independent) e4m3 encoder.
void ReferenceFp8(const std::vector<bf16>& x, int64_t m, const TestWeight& t, std::vector<double>* y,
                  std::vector<double>* magnitude) {
  const int64_t n = t.w.out_features, k = t.w.in_features, kb_count = t.w.ScaleCols();
  std::vector<double> aq(k), as(kb_count);
  y->assign(m * n, 0.0);
  magnitude->assign(m * n, 0.0);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t kb = 0; kb < kb_count; ++kb) {
      const int64_t k0 = kb * 128, k1 = std::min(k, k0 + 128);
      float amax = 0.0f;
      for (int64_t i = k0; i < k1; ++i) amax = std::max(amax, std::fabs(BF16ToFloat(x[r * k + i])));
      const float s = std::max(amax, 1e-10f) / 448.0f;
      as[kb] = s;
      for (int64_t i = k0; i < k1; ++i) {
        const float v = std::clamp(BF16ToFloat(x[r * k + i]) / s, -448.0f, 448.0f);
        aq[i] = Fp8E4M3ToFloat(FloatToFp8E4M3(v));
      }
    }
    for (int64_t c = 0; c < n; ++c) {
      for (int64_t kb = 0; kb < kb_count; ++kb) {
        double block = 0.0;
        for (int64_t i = kb * 128; i < std::min(k, kb * 128 + 128); ++i)
          block += aq[i] * Fp8E4M3ToFloat(t.fp8_data[c * k + i]);
        const double term = block * as[kb] * t.scale_inv[(c / 128) * kb_count + kb];
        (*y)[r * n + c] += term;
        (*magnitude)[r * n + c] += std::fabs(term);
      }
    }
  }
}

// |y - ref| <= bf16 rounding (2^-8 relative, generous) + fp32 accumulation error.
void ExpectClose(const std::vector<bf16>& y, const std::vector<double>& ref,
                 const std::vector<double>& magnitude, double accumulation_tolerance) {
  ASSERT_EQ(y.size(), ref.size());
  for (size_t i = 0; i < y.size(); ++i) {
    const double got = BF16ToFloat(y[i]);
    const double bound = std::ldexp(std::fabs(ref[i]), -8) + accumulation_tolerance * magnitude[i];
    ASSERT_LE(std::fabs(got - ref[i]), bound) << "element " << i << " ref " << ref[i];
  }
}

// A kernel path: an ISA and, for AVX-512 with FP8 weights, which FP8 kernel.
struct KernelPath {
  Isa isa;
  internal::Fp8Kernel fp8 = internal::Fp8Kernel::kDot;
};

// Switches to a kernel path for the scope, and back.
class ScopedKernelPath {
 public:
  explicit ScopedKernelPath(KernelPath path) : saved_{ActiveIsa(), internal::ActiveFp8Kernel()} { Set(path); }
  ~ScopedKernelPath() { Set(saved_); }
  static void Set(KernelPath path) {
    internal::SetIsaForTesting(path.isa);
    internal::SetFp8KernelForTesting(path.fp8);
  }

 private:
  KernelPath saved_;
};

class LinearIsaTest : public ::testing::TestWithParam<KernelPath> {
 protected:
  void SetUp() override {
    if (!CpuSupports(GetParam().isa)) GTEST_SKIP() << "CPU lacks " << IsaName(GetParam().isa);
    scoped_ = std::make_unique<ScopedKernelPath>(GetParam());
  }
  void TearDown() override { scoped_.reset(); }
  std::unique_ptr<ScopedKernelPath> scoped_;
};

TEST_P(LinearIsaTest, Bf16MatchesDoubleReference) {
  for (auto [m, n, k] : {std::tuple{5, 96, 2048}, std::tuple{3, 13, 77}, std::tuple{9, 70, 300}}) {
    const TestWeight t = MakeBf16Weight(n, k, 11);
    const std::vector<bf16> x = RandomBf16(m * k, 12);
    std::vector<bf16> y(m * n);
    Linear(x.data(), m, t.w, y.data());
    std::vector<double> ref, magnitude;
    ReferenceBf16(x, m, t, &ref, &magnitude);
    ExpectClose(y, ref, magnitude, std::ldexp(1.0, -18));
  }
}

TEST_P(LinearIsaTest, Fp8MatchesDoubleReference) {
  for (auto [m, n, k] : {std::tuple{4, 130, 384}, std::tuple{7, 64, 200}, std::tuple{1, 5, 40}}) {
    const TestWeight t = MakeFp8Weight(n, k, 21);
    const std::vector<bf16> x = RandomBf16(m * k, 22);
    std::vector<bf16> y(m * n);
    Linear(x.data(), m, t.w, y.data());
    std::vector<double> ref, magnitude;
    ReferenceFp8(x, m, t, &ref, &magnitude);
    ExpectClose(y, ref, magnitude, std::ldexp(1.0, -16));
  }
}

TEST_P(LinearIsaTest, HonorsRowStrides) {
  const int64_t m = 6, n = 20, k = 64, xs = 100, ys = 33;
  const TestWeight t = MakeBf16Weight(n, k, 31);
  const std::vector<bf16> packed = RandomBf16(m * k, 32);
  std::vector<bf16> strided(m * xs, FloatToBF16(1000.0f));
  for (int64_t r = 0; r < m; ++r)
    std::copy(packed.begin() + r * k, packed.begin() + (r + 1) * k, strided.begin() + r * xs);
  std::vector<bf16> y_packed(m * n), y_strided(m * ys, FloatToBF16(-7.0f));
  Linear(packed.data(), m, t.w, y_packed.data());
  Linear(strided.data(), xs, m, t.w, y_strided.data(), ys);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t c = 0; c < n; ++c) EXPECT_EQ(y_strided[r * ys + c].bits, y_packed[r * n + c].bits);
    for (int64_t c = n; c < ys && r + 1 < m; ++c) EXPECT_EQ(BF16ToFloat(y_strided[r * ys + c]), -7.0f);
  }
}

// Row r's output must not depend on the batch: all rows at once, one at a time, reversed order
// (other positions), and pools of 1 and 3 threads must agree bit for bit.
void CheckBatchInvariance(const LinearWeight& w, uint32_t seed, int64_t m = 70) {
  // 70 rows cross a 64-row block (bf16), 140 the AVX-512 FP8 dot kernel's 128-row block.
  const int64_t n = w.out_features, k = w.in_features;
  const std::vector<bf16> x = RandomBf16(m * k, seed);
  std::vector<bf16> all(m * n);
  Linear(x.data(), m, w, all.data());

  std::vector<bf16> single(m * n);
  for (int64_t r = 0; r < m; ++r) Linear(x.data() + r * k, 1, w, single.data() + r * n);
  EXPECT_EQ(FirstDifference(all, single), -1) << "one row at a time";

  std::vector<bf16> reversed_x(m * k), reversed_y(m * n), unreversed(m * n);
  for (int64_t r = 0; r < m; ++r)
    std::copy(x.begin() + r * k, x.begin() + (r + 1) * k, reversed_x.begin() + (m - 1 - r) * k);
  Linear(reversed_x.data(), m, w, reversed_y.data());
  for (int64_t r = 0; r < m; ++r)
    std::copy(reversed_y.begin() + (m - 1 - r) * n, reversed_y.begin() + (m - r) * n,
              unreversed.begin() + r * n);
  EXPECT_EQ(FirstDifference(all, unreversed), -1) << "rows reversed";

  for (int threads : {1, 3}) {
    ThreadPool pool(threads);
    ScopedThreadPool scoped(&pool);
    std::vector<bf16> y(m * n);
    Linear(x.data(), m, w, y.data());
    EXPECT_EQ(FirstDifference(all, y), -1) << threads << " threads";
    std::vector<bf16> some(13 * n);  // a 13-row batch from the middle
    Linear(x.data() + 20 * k, 13, w, some.data());
    EXPECT_TRUE(std::equal(some.begin(), some.end(), all.begin() + 20 * n,
                           [](bf16 a, bf16 b) { return a.bits == b.bits; }));
  }
}

TEST_P(LinearIsaTest, Bf16IsBatchInvariant) {
  const TestWeight t = MakeBf16Weight(203, 300, 41);
  CheckBatchInvariance(t.w, 42);
}

TEST_P(LinearIsaTest, Fp8IsBatchInvariant) {
  const TestWeight t = MakeFp8Weight(203, 300, 51);
  CheckBatchInvariance(t.w, 52);
  CheckBatchInvariance(t.w, 53, 140);
}

// Pins the documented FP8 reduction order with absorption: P = 448 * 448 swallows t = 2^-9 in
// fp32, so the result depends on where t is added relative to +P and -P. Lane 0 of block 0 sums
// k = 1, 0, 9, 8 (chunk 0), then k = 65, 64, ... (chunk 1).
//   column 0: k1 = +P, k0 = t, k9 = -P, k8 = t  -> ((P + t) - P) + t = t
//   column 1: k1 = +P, k0 = t, k65 = -P, k64 = t -> t
// Summing in k order, or the previous order (lane i: k = i, i + 16, ...), gives 2t instead.
// The row is repeated to run every tile shape (and, in the dot kernel, both ways of widening).
TEST_P(LinearIsaTest, Fp8FollowsDocumentedOrder) {
  constexpr int64_t kK = 128;
  constexpr uint8_t kPlus448 = 0x7e, kMinus448 = 0xfe, kOne = 0x38;
  std::vector<uint8_t> codes(2 * kK, 0);
  codes[1] = kPlus448, codes[0] = kOne, codes[9] = kMinus448, codes[8] = kOne;
  codes[kK + 1] = kPlus448, codes[kK + 0] = kOne, codes[kK + 65] = kMinus448, codes[kK + 64] = kOne;
  std::vector<float> scale_inv(1, 1.0f);
  const LinearWeight w{DType::kF8E4M3, 2, kK, codes.data(), scale_inv.data()};
  std::vector<bf16> x(kK, FloatToBF16(0.0f));
  for (int64_t k : {1, 9, 65}) x[k] = FloatToBF16(448.0f);  // amax 448: scale 1, exact codes
  for (int64_t k : {0, 8, 64}) x[k] = FloatToBF16(std::ldexp(1.0f, -9));
  for (int64_t m : {1, 2, 3, 4, 8, 9, 130}) {
    std::vector<bf16> xs(m * kK), y(m * 2);
    for (int64_t r = 0; r < m; ++r) std::copy(x.begin(), x.end(), xs.begin() + r * kK);
    Linear(xs.data(), m, w, y.data());
    for (int64_t r = 0; r < m; ++r) {
      EXPECT_EQ(BF16ToFloat(y[2 * r]), std::ldexp(1.0f, -9)) << "rows " << m << " row " << r;
      EXPECT_EQ(BF16ToFloat(y[2 * r + 1]), std::ldexp(1.0f, -9)) << "rows " << m << " row " << r;
    }
  }
}

// LinearGrouped must equal one Linear per call, bit for bit: random shapes (partial column chunks,
// partial k blocks), bf16 and fp8 weights mixed, strided inputs and outputs, empty calls, and
// consecutive fp8 calls on the same x (which share one quantization), under several pool sizes.
void CheckGroupedEqualsLinear(uint32_t seed) {
  std::mt19937 rng(seed);
  auto uniform = [&rng](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  const int num_calls = static_cast<int>(uniform(6, 14));
  std::vector<TestWeight> weights;
  weights.reserve(num_calls);
  std::vector<std::vector<bf16>> inputs;
  std::vector<LinearCall> calls;
  std::vector<int64_t> y_offset;
  int64_t y_total = 0;
  for (int i = 0; i < num_calls; ++i) {
    const bool share_x = i > 0 && uniform(0, 2) == 0;  // same x as the previous call (gate/up)
    const int64_t k = share_x ? calls.back().w->in_features : uniform(1, 400);
    const int64_t n = uniform(1, 300);
    const bool fp8 = uniform(0, 1) == 1;
    const uint32_t wseed = seed * 100 + i;
    weights.push_back(fp8 ? MakeFp8Weight(n, k, wseed) : MakeBf16Weight(n, k, wseed));
    LinearCall c;
    c.w = &weights.back().w;
    if (share_x) {
      c.x = calls.back().x;
      c.x_stride = calls.back().x_stride;
      c.num_rows = calls.back().num_rows;
    } else {
      c.num_rows = uniform(0, 5) == 0 ? 0 : uniform(1, 9);
      c.x_stride = k + uniform(0, 7);
      inputs.push_back(RandomBf16(std::max<int64_t>(c.num_rows, 1) * c.x_stride, wseed, 2.0f));
      c.x = inputs.back().data();
    }
    c.y_stride = n + uniform(0, 5);
    y_offset.push_back(y_total);
    y_total += std::max<int64_t>(c.num_rows, 1) * c.y_stride;
    calls.push_back(c);
  }
  const bf16 sentinel = FloatToBF16(-123.0f);
  std::vector<bf16> expected(y_total, sentinel);
  for (int i = 0; i < num_calls; ++i) {
    const LinearCall& c = calls[i];
    Linear(c.x, c.x_stride, c.num_rows, *c.w, expected.data() + y_offset[i], c.y_stride);
  }
  for (int threads : {0, 1, 3}) {  // 0: the global pool
    std::unique_ptr<ThreadPool> pool = threads > 0 ? std::make_unique<ThreadPool>(threads) : nullptr;
    std::unique_ptr<ScopedThreadPool> scoped =
        pool ? std::make_unique<ScopedThreadPool>(pool.get()) : nullptr;
    std::vector<bf16> grouped(y_total, sentinel);
    std::vector<LinearCall> grouped_calls = calls;
    for (int i = 0; i < num_calls; ++i) grouped_calls[i].y = grouped.data() + y_offset[i];
    LinearGrouped(grouped_calls);
    ASSERT_EQ(std::memcmp(grouped.data(), expected.data(), y_total * sizeof(bf16)), 0)
        << "seed " << seed << " threads " << threads << " first difference at "
        << FirstDifference(grouped, expected);
  }
}

TEST_P(LinearIsaTest, GroupedEqualsLinearPerCall) {
  for (uint32_t seed = 1; seed <= 12; ++seed) CheckGroupedEqualsLinear(seed);
}

// FP8, bf16 and FP8 calls on one input (quantized once for both FP8 calls, widened once for the
// bf16 one on the AVX2 path) must each equal their own Linear.
TEST_P(LinearIsaTest, GroupedSharesAnInputAcrossDtypes) {
  const int64_t m = 5, k = 300;
  const TestWeight a = MakeFp8Weight(70, k, 91), b = MakeBf16Weight(40, k, 92), c = MakeFp8Weight(30, k, 93);
  const std::vector<bf16> x = RandomBf16(m * k, 94, 2.0f);
  std::vector<bf16> ya(m * 70), yb(m * 40), yc(m * 30), ea(ya.size()), eb(yb.size()), ec(yc.size());
  const LinearCall calls[] = {{x.data(), k, m, &a.w, ya.data(), 70},
                              {x.data(), k, m, &b.w, yb.data(), 40},
                              {x.data(), k, m, &c.w, yc.data(), 30}};
  LinearGrouped(calls);
  Linear(x.data(), m, a.w, ea.data());
  Linear(x.data(), m, b.w, eb.data());
  Linear(x.data(), m, c.w, ec.data());
  EXPECT_EQ(FirstDifference(ya, ea), -1);
  EXPECT_EQ(FirstDifference(yb, eb), -1);
  EXPECT_EQ(FirstDifference(yc, ec), -1);
}

TEST_P(LinearIsaTest, GroupedWritesOnlyItsOutputs) {
  // Two calls: one real, one with zero rows (must not write). The padding columns between output
  // rows keep their values.
  const TestWeight a = MakeFp8Weight(70, 130, 81), b = MakeBf16Weight(10, 20, 82);
  const std::vector<bf16> x = RandomBf16(3 * 130, 83);
  std::vector<bf16> ya(3 * 75, FloatToBF16(5.0f)), yb(10, FloatToBF16(6.0f));
  const std::vector<LinearCall> calls = {{x.data(), 130, 3, &a.w, ya.data(), 75},
                                         {x.data(), 20, 0, &b.w, yb.data(), 10}};
  LinearGrouped(calls);
  std::vector<bf16> ref(3 * 70);
  Linear(x.data(), 3, a.w, ref.data());
  for (int64_t r = 0; r < 3; ++r) {
    for (int64_t c = 0; c < 70; ++c) EXPECT_EQ(ya[r * 75 + c].bits, ref[r * 70 + c].bits);
    for (int64_t c = 70; c < 75; ++c) EXPECT_EQ(BF16ToFloat(ya[r * 75 + c]), 5.0f);
  }
  for (const bf16 v : yb) EXPECT_EQ(BF16ToFloat(v), 6.0f);
  LinearGrouped({});  // no calls: nothing to do
}

INSTANTIATE_TEST_SUITE_P(Isas, LinearIsaTest,
                         ::testing::Values(KernelPath{Isa::kPortable}, KernelPath{Isa::kAvx512Bf16},
                                           KernelPath{Isa::kAvx512Bf16, internal::Fp8Kernel::kFma},
                                           KernelPath{Isa::kAvx2Fma}),
                         [](const auto& info) {
                           std::string name = IsaName(info.param.isa);
                           if (info.param.isa == Isa::kAvx512Bf16)
                             name += internal::Fp8KernelName(info.param.fp8);
                           return name;
                         });

// The portable path reproduces the documented order, so it must equal the AVX-512 path exactly
// (inputs here have no bf16 subnormals, the one documented difference).
TEST(LinearTest, PortablePathEqualsAvx512BitForBit) {
  if (!CpuSupports(Isa::kAvx512Bf16)) GTEST_SKIP() << "no AVX-512 BF16";
  const Isa saved = ActiveIsa();
  // 1-3 rows take the bf16 streaming kernel, 4 and more the tiles; 150 columns leave a tail of 6
  // after 16-column groups (and of 2 after 4-column tiles), k = 1000 a partial last chunk.
  for (bool fp8 : {false, true}) {
    const TestWeight t = fp8 ? MakeFp8Weight(150, 1000, 61) : MakeBf16Weight(150, 1000, 61);
    for (int64_t m : {1, 2, 3, 4, 5, 11}) {
      const std::vector<bf16> x = RandomBf16(m * 1000, 62, 3.0f);
      std::vector<bf16> fast(m * 150), portable(m * 150);
      internal::SetIsaForTesting(Isa::kAvx512Bf16);
      Linear(x.data(), m, t.w, fast.data());
      internal::SetIsaForTesting(Isa::kPortable);
      Linear(x.data(), m, t.w, portable.data());
      EXPECT_EQ(FirstDifference(fast, portable), -1) << (fp8 ? "fp8" : "bf16") << ", " << m << " rows";
    }
  }
  internal::SetIsaForTesting(saved);
}

// Activations spread over many binades, so that quantization yields e4m3 subnormals, zeros and
// clamped values in every group.
std::vector<bf16> WideRangeBf16(size_t n, uint32_t seed) {
  std::vector<bf16> x = RandomBf16(n, seed, 1.0f);
  std::mt19937 rng(seed + 1);
  for (bf16& v : x) v = FloatToBF16(std::ldexp(BF16ToFloat(v), static_cast<int>(rng() % 24) - 20));
  return x;
}

// Every tile shape of both AVX-512 FP8 kernels (fma: 1 x 16, 2 x 8, 4 x 4 with 3 or 4 rows, 8 x 2
// and the mixes after it; dot: 1 or 2 rows streamed a weight row at a time (two columns per fold
// up to 8 / 4 k-blocks, one beyond, several folds per column from 17 / 9 blocks), else the scratch,
// 4 x 4 with 3 or 4 rows, 2 x 8, 1 x 16 after them, more than one 128-row block), partial column
// groups and partial k chunks and blocks must reproduce the portable path bit for bit.
TEST(LinearTest, Fp8PortableEqualsAvx512ForEveryTileShape) {
  if (!CpuSupports(Isa::kAvx512Bf16) || !internal::Fp8Avx512Supported())
    GTEST_SKIP() << "no AVX-512 FP8 path on this CPU";
  for (auto [n, k] : {std::pair{37, 40}, std::pair{16, 64}, std::pair{130, 200}, std::pair{5, 1000},
                      std::pair{64, 256}, std::pair{70, 1088}, std::pair{21, 2200}}) {
    const TestWeight t = MakeFp8Weight(n, k, static_cast<uint32_t>(n * 1000 + k));
    for (int64_t m : {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 19, 130, 261}) {
      if (m > 19 && k > 256) continue;  // keep the portable reference quick
      const std::vector<bf16> x = WideRangeBf16(m * k, static_cast<uint32_t>(m + k));
      std::vector<bf16> portable(m * n);
      {
        ScopedKernelPath path({Isa::kPortable});
        Linear(x.data(), m, t.w, portable.data());
      }
      for (internal::Fp8Kernel kernel : {internal::Fp8Kernel::kDot, internal::Fp8Kernel::kFma}) {
        ScopedKernelPath path({Isa::kAvx512Bf16, kernel});
        std::vector<bf16> fast(m * n);
        Linear(x.data(), m, t.w, fast.data());
        ASSERT_EQ(FirstDifference(fast, portable), -1)
            << internal::Fp8KernelName(kernel) << " n=" << n << " k=" << k << " rows=" << m;
      }
    }
  }
}

// Non-finite inputs: every e4m3 code (NaNs 0x7f and 0xff, subnormals) in the weights, and
// activation rows with NaNs of both signs and infinities (a group holding an infinity quantizes to
// NaN and zeros). Every path must give the same bits, which for a NaN output is the quiet NaN
// 0x7FC0 whatever the signs of the NaNs that met (IEEE leaves that to the operand order).
TEST(LinearTest, Fp8PathsAgreeOnNonFiniteInputs) {
  const int64_t n = 256, k = 300;
  TestWeight t;
  t.fp8_data.resize(n * k);
  std::mt19937 rng(5);
  for (int64_t c = 0; c < n; ++c)
    for (int64_t i = 0; i < k; ++i)  // column c holds code c at every 7th k, random codes elsewhere
      t.fp8_data[c * k + i] = static_cast<uint8_t>(i % 7 == 0 ? c : rng() & 0x77);
  t.w = LinearWeight{DType::kF8E4M3, n, k, t.fp8_data.data(), nullptr};
  t.scale_inv.assign(t.w.ScaleRows() * t.w.ScaleCols(), 0.25f);
  t.w.scale_inv = t.scale_inv.data();
  const int64_t m = 9;
  std::vector<bf16> x = WideRangeBf16(m * k, 77);
  x[1 * k + 3] = bf16{0x7fc0};              // +NaN
  x[2 * k + 130] = bf16{0xffc0};            // -NaN
  x[3 * k + 5] = FloatToBF16(INFINITY);     // group 0: NaN (inf / inf) and zeros
  x[4 * k + 260] = FloatToBF16(-INFINITY);  // last, partial group
  x[5 * k + 7] = bf16{0x7fc0};              // both signs in one row
  x[5 * k + 140] = bf16{0xffc0};
  x[6 * k + 9] = FloatToBF16(INFINITY);
  x[6 * k + 10] = bf16{0x7f81};  // a signalling NaN
  std::vector<bf16> portable(m * n);
  {
    ScopedKernelPath path({Isa::kPortable});
    Linear(x.data(), m, t.w, portable.data());
  }
  int nans = 0;
  for (const bf16 v : portable) {
    if (std::isnan(BF16ToFloat(v))) {
      ASSERT_EQ(v.bits, 0x7fc0);
      ++nans;
    }
  }
  EXPECT_GT(nans, n * 6);  // rows 1-6 are all NaN, and the NaN weight columns in every row
  EXPECT_LT(nans, m * n);  // rows 0, 7 and 8 keep finite outputs
  std::vector<KernelPath> paths;
  if (CpuSupports(Isa::kAvx512Bf16) && internal::Fp8Avx512Supported()) {
    paths.push_back({Isa::kAvx512Bf16, internal::Fp8Kernel::kDot});
    paths.push_back({Isa::kAvx512Bf16, internal::Fp8Kernel::kFma});
  }
  if (CpuSupports(Isa::kAvx2Fma)) paths.push_back({Isa::kAvx2Fma});
  for (const KernelPath& p : paths) {
    for (int64_t rows : {int64_t{1}, int64_t{2}, m}) {  // the dot kernel streams up to 2 rows
      ScopedKernelPath path(p);
      std::vector<bf16> fast(m * n);
      for (int64_t r = 0; r < m; r += rows)
        Linear(x.data() + r * k, std::min(rows, m - r), t.w, fast.data() + r * n);
      EXPECT_EQ(FirstDifference(fast, portable), -1)
          << IsaName(p.isa) << " " << internal::Fp8KernelName(p.fp8) << " rows per call " << rows;
    }
  }
}

// The AVX2 path must reproduce the portable path bit for bit for both dtypes: 1- and 2-row tiles,
// row blocks with and without packed weights (up to 4 rows the bf16 weights are widened in
// registers when k is a multiple of 32), more than one 64-row block, partial 4-column tiles,
// partial 32-chunks and 128-blocks, and k beyond one 512-wide slice.
TEST(LinearTest, Avx2EqualsPortableForEveryTileShape) {
  if (!CpuSupports(Isa::kAvx2Fma)) GTEST_SKIP() << "no AVX2/FMA on this CPU";
  const Isa saved = ActiveIsa();
  for (bool fp8 : {false, true}) {
    for (auto [n, k] : {std::pair{37, 40}, std::pair{16, 64}, std::pair{130, 200}, std::pair{5, 1000},
                        std::pair{64, 256}, std::pair{70, 1088}}) {
      const uint32_t seed = static_cast<uint32_t>(n * 1000 + k);
      const TestWeight t = fp8 ? MakeFp8Weight(n, k, seed) : MakeBf16Weight(n, k, seed);
      for (int64_t m : {1, 2, 3, 4, 5, 7, 8, 9, 13, 64, 67}) {
        const std::vector<bf16> x = fp8 ? WideRangeBf16(m * k, static_cast<uint32_t>(m + k))
                                        : RandomBf16(m * k, static_cast<uint32_t>(m + k), 3.0f);
        std::vector<bf16> fast(m * n), portable(m * n);
        internal::SetIsaForTesting(Isa::kAvx2Fma);
        Linear(x.data(), m, t.w, fast.data());
        internal::SetIsaForTesting(Isa::kPortable);
        Linear(x.data(), m, t.w, portable.data());
        ASSERT_EQ(FirstDifference(fast, portable), -1)
            << (fp8 ? "fp8" : "bf16") << " n=" << n << " k=" << k << " rows=" << m;
      }
    }
  }
  internal::SetIsaForTesting(saved);
}

// Every e4m3 code, NaNs (0x7f, 0xff) and subnormals included, must widen to the decoding table's
// value on the AVX2 path: weight row c holds code c at every k, so output c is a plain sum of
// that value times the activations, and a NaN code must give the portable path's NaN bits.
TEST(LinearTest, Avx2WidensEveryE4m3CodeLikeTheTable) {
  if (!CpuSupports(Isa::kAvx2Fma)) GTEST_SKIP() << "no AVX2/FMA on this CPU";
  const Isa saved = ActiveIsa();
  const int64_t n = 256;
  // k = 256 with up to 4 rows widens in registers; k = 160 or 9 rows widens into packed panels.
  for (int64_t k : {160, 256}) {
    TestWeight t;
    t.fp8_data.resize(n * k);
    for (int64_t c = 0; c < n; ++c)
      for (int64_t i = 0; i < k; ++i) t.fp8_data[c * k + i] = static_cast<uint8_t>(c);
    t.w = LinearWeight{DType::kF8E4M3, n, k, t.fp8_data.data(), nullptr};
    t.scale_inv.assign(t.w.ScaleRows() * t.w.ScaleCols(), 0.5f);
    t.w.scale_inv = t.scale_inv.data();
    for (int64_t m : {1, 3, 9}) {
      const std::vector<bf16> x = RandomBf16(m * k, 71, 1.0f);
      std::vector<bf16> fast(m * n), portable(m * n);
      internal::SetIsaForTesting(Isa::kAvx2Fma);
      Linear(x.data(), m, t.w, fast.data());
      internal::SetIsaForTesting(Isa::kPortable);
      Linear(x.data(), m, t.w, portable.data());
      EXPECT_EQ(FirstDifference(fast, portable), -1) << "k=" << k << " rows=" << m;
      EXPECT_TRUE(std::isnan(BF16ToFloat(fast[0x7f]))) << "k=" << k << " rows=" << m;
    }
  }
  internal::SetIsaForTesting(saved);
}

TEST(LinearTest, PackedPositionIsAPermutation) {
  std::vector<int> seen(64, 0);
  for (int i = 0; i < 64; ++i) ++seen[internal::Fp8PackedPosition(i)];
  for (int i = 0; i < 64; ++i) EXPECT_EQ(seen[i], 1) << i;
  // Lane 0 of the four runs: k = 1, 0, 9, 8; lane 5: j = 16 + 2 = 18.
  EXPECT_EQ(internal::Fp8PackedPosition(1), 0);
  EXPECT_EQ(internal::Fp8PackedPosition(0), 16);
  EXPECT_EQ(internal::Fp8PackedPosition(9), 32);
  EXPECT_EQ(internal::Fp8PackedPosition(8), 48);
  EXPECT_EQ(internal::Fp8PackedPosition(19), 5);
  EXPECT_EQ(internal::Fp8PackedPosition(26), 53);
}

TEST(LinearTest, DotPositionIsAPermutation) {
  std::vector<int> seen(64, 0);
  for (int i = 0; i < 64; ++i) ++seen[internal::Fp8DotPosition(i)];
  for (int i = 0; i < 64; ++i) EXPECT_EQ(seen[i], 1) << i;
  // Word pair l of run 0 holds k = j, j + 1 for j = 16 * (l / 4) + 2 * (l % 4); run 1: j + 8.
  EXPECT_EQ(internal::Fp8DotPosition(0), 0);
  EXPECT_EQ(internal::Fp8DotPosition(1), 1);
  EXPECT_EQ(internal::Fp8DotPosition(18), 2 * 5);
  EXPECT_EQ(internal::Fp8DotPosition(19), 2 * 5 + 1);
  EXPECT_EQ(internal::Fp8DotPosition(8), 32);
  EXPECT_EQ(internal::Fp8DotPosition(63), 63);
}

TEST(LinearTest, PackedQuantizationMatchesPortable) {
  if (!internal::Fp8Avx512Supported()) GTEST_SKIP() << "no AVX-512 FP8 path on this CPU";
  for (int64_t k : {1, 40, 128, 130, 300, 2048}) {
    std::vector<bf16> x = WideRangeBf16(k, static_cast<uint32_t>(k));
    if (k >= 300) std::fill(x.begin() + 128, x.begin() + 256, FloatToBF16(0.0f));  // eps group
    if (k == 2048) {  // non-finite inputs: a NaN group, and an inf group (x / inf = NaN)
      x[300] = bf16{0x7fc0};
      x[700] = FloatToBF16(-INFINITY);
    }
    const int64_t groups = (k + 127) / 128;
    std::vector<float> aq(groups * 128), scale(groups), packed(groups * 128, -1.0f), packed_scale(groups);
    std::vector<float> dot_scale(groups);
    std::vector<uint16_t> dot(groups * 128, 0xffff);
    internal::QuantizeRowFp8(x.data(), k, aq.data(), scale.data());
    internal::QuantizeRowFp8PackedAvx512(x.data(), k, packed.data(), packed_scale.data());
    internal::QuantizeRowFp8DotAvx512(x.data(), k, dot.data(), dot_scale.data());
    auto bits = [](float f) {
      uint32_t u;
      std::memcpy(&u, &f, sizeof(u));
      return u;
    };
    for (int64_t g = 0; g < groups; ++g) {
      ASSERT_EQ(bits(packed_scale[g]), bits(scale[g])) << "k=" << k << " g=" << g;
      ASSERT_EQ(bits(dot_scale[g]), bits(scale[g])) << "k=" << k << " g=" << g;
    }
    for (int64_t i = 0; i < groups * 128; ++i) {
      const float got = packed[i / 64 * 64 + internal::Fp8PackedPosition(i % 64)];
      ASSERT_EQ(bits(got), bits(aq[i])) << "k=" << k << " i=" << i << ": " << got << " vs " << aq[i];
      // The dot layout holds the same value as a bf16 word (exact: e4m3 fits in bf16).
      const uint16_t word = dot[i / 64 * 64 + internal::Fp8DotPosition(i % 64)];
      ASSERT_EQ(uint32_t{word} << 16, bits(aq[i])) << "k=" << k << " i=" << i;
    }
    if (k == 2048) {
      EXPECT_TRUE(std::isnan(aq[300]));
      EXPECT_TRUE(std::isnan(aq[700]));
    }
  }
}

TEST(LinearTest, RoundToE4M3MatchesLibraryEncoder) {
  std::vector<float> values;
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7f) == 0x7f) continue;
    const float v = Fp8E4M3ToFloat(static_cast<uint8_t>(code));
    values.push_back(v);
    values.push_back(std::nextafter(v, 0.0f));
    values.push_back(std::nextafter(v, 1000.0f * (v < 0 ? -1.0f : 1.0f)));
  }
  for (int code = 0; code < 0x7e; ++code) {  // exact midpoints between neighbours: ties to even
    const float a = Fp8E4M3ToFloat(static_cast<uint8_t>(code));
    const float b = Fp8E4M3ToFloat(static_cast<uint8_t>(code + 1));
    values.push_back((a + b) / 2);
    values.push_back(-(a + b) / 2);
  }
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-448.0f, 448.0f);
  for (int i = 0; i < 100000; ++i) values.push_back(dist(rng) / (1 << (i % 16)));
  for (float v : values) {
    if (std::fabs(v) > 448.0f) continue;  // callers clamp first
    const float expected = Fp8E4M3ToFloat(FloatToFp8E4M3(v));
    const float got = internal::RoundToE4M3(v);
    ASSERT_EQ(std::signbit(got), std::signbit(expected)) << v;
    ASSERT_EQ(got, expected) << v;
  }
}

TEST(LinearTest, QuantizeUsesEpsForAllZeroGroup) {
  std::vector<bf16> x(256, FloatToBF16(0.0f));
  x[128] = FloatToBF16(-3.5f);
  x[200] = FloatToBF16(0.75f);
  std::vector<float> aq(256, -1.0f), scale(2, -1.0f);
  internal::QuantizeRowFp8(x.data(), 256, aq.data(), scale.data());
  EXPECT_EQ(scale[0], 1e-10f / 448.0f);
  for (int i = 0; i < 128; ++i) ASSERT_EQ(aq[i], 0.0f);
  EXPECT_EQ(scale[1], 3.5f / 448.0f);
  EXPECT_EQ(aq[128], -448.0f);
  EXPECT_EQ(aq[200], Fp8E4M3ToFloat(FloatToFp8E4M3(0.75f / (3.5f / 448.0f))));  // 96
  EXPECT_EQ(aq[200], 96.0f);

  // Through Linear: an all-zero input row gives exact zeros, never NaN.
  const TestWeight t = MakeFp8Weight(8, 256, 71);
  std::vector<bf16> zeros(256, FloatToBF16(0.0f)), y(8, FloatToBF16(1.0f));
  Linear(zeros.data(), 1, t.w, y.data());
  for (bf16 v : y) EXPECT_EQ(v.bits, 0);
}

TEST(LinearTest, QuantizePadsPartialGroupWithZeros) {
  const std::vector<bf16> x = RandomBf16(130, 81);
  std::vector<float> aq(256, -1.0f), scale(2);
  internal::QuantizeRowFp8(x.data(), 130, aq.data(), scale.data());
  for (int i = 130; i < 256; ++i) ASSERT_EQ(aq[i], 0.0f);
  const float amax = std::max(std::fabs(BF16ToFloat(x[128])), std::fabs(BF16ToFloat(x[129])));
  EXPECT_EQ(scale[1], amax / 448.0f);
}

}  // namespace
}  // namespace moe::kernels::cpu
