// Every CUDA kernel against the CPU reference kernel (common/kernels/cpu) on random inputs. Needs a
// GPU (label gpu); skips with the reason without one.
//
// Tolerances (docs/gpu.md#numerics): elementwise kernels with no reduction are bit-identical to the
// CPU; kernels with an fp32 reduction (RMSNorm, softmaxes, SiLU's expf) may differ by one bf16 ulp;
// attention by 1e-2 and the GEMMs by 2e-2 (bf16) / 5e-2 (fp8) of the output's largest magnitude,
// the bounds issue 11 sets for logits.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "common/kernels/cpu/kernels.h"
#include "common/kernels/cpu/linear_internal.h"
#include "common/kernels/cuda/cuda_kernels.h"
#include "common/tensor/fp8.h"
#include "gtest/gtest.h"
#include "tests/common/kernels/cuda/device_probe.h"

namespace moe::kernels::cuda {
namespace {

using testing::DeviceBuffer;

std::vector<bf16> RandomBf16(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<bf16> v(n);
  for (bf16& x : v) x = FloatToBF16(dist(rng));
  return v;
}

// Largest |a - b| in bf16 ulps of the larger magnitude (0 when bit-identical).
double MaxUlps(const std::vector<bf16>& a, const std::vector<bf16>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    const double x = BF16ToFloat(a[i]), y = BF16ToFloat(b[i]);
    if (x == y) continue;
    const double ulp = std::ldexp(1.0, std::ilogb(std::max({std::fabs(x), std::fabs(y), 1e-30})) - 7);
    worst = std::max(worst, std::fabs(x - y) / ulp);
  }
  return worst;
}

// max |a - b| / max |b|.
double RelMaxDiff(const std::vector<bf16>& a, const std::vector<bf16>& b) {
  double diff = 0, mag = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    diff = std::max(diff, std::fabs(double{BF16ToFloat(a[i])} - BF16ToFloat(b[i])));
    mag = std::max(mag, std::fabs(double{BF16ToFloat(b[i])}));
  }
  return mag > 0 ? diff / mag : diff;
}

TEST(CudaKernelsTest, RmsNormWithinOneUlpOfCpu) {
  MOE_REQUIRE_CUDA_DEVICE();
  const int64_t rows = 7, dim = 2048, stride = 2100;
  const std::vector<bf16> x = RandomBf16(rows * stride, 1, 3.0f), w = RandomBf16(dim, 2, 0.5f);
  std::vector<bf16> want(rows * dim);
  cpu::RmsNorm(x.data(), stride, rows, dim, w.data(), 1e-6f, want.data(), dim);
  DeviceBuffer<bf16> dx(x), dw(w), dy(rows * dim);
  ASSERT_TRUE(RmsNorm(dx.get(), stride, rows, dim, dw.get(), 1e-6f, dy.get(), dim, nullptr).ok());
  EXPECT_LE(MaxUlps(dy.Download(), want), 1.0);
  // Batch invariance on the GPU: row 5 alone gives the same bits as in the batch.
  DeviceBuffer<bf16> one(dim);
  ASSERT_TRUE(RmsNorm(dx.get() + 5 * stride, stride, 1, dim, dw.get(), 1e-6f, one.get(), dim, nullptr).ok());
  const std::vector<bf16> all = dy.Download(), alone = one.Download();
  EXPECT_TRUE(std::equal(alone.begin(), alone.end(), all.begin() + 5 * dim,
                         [](bf16 a, bf16 b) { return a.bits == b.bits; }));
}

TEST(CudaKernelsTest, QkNormMatchesCpuPerHead) {
  MOE_REQUIRE_CUDA_DEVICE();
  const int64_t tokens = 5, heads = 8, dim = 128, stride = heads * dim + 3 * dim;  // q inside a qkv row
  const std::vector<bf16> x = RandomBf16(tokens * stride, 3, 2.0f), w = RandomBf16(dim, 4, 0.3f);
  std::vector<bf16> want = x;
  for (int64_t t = 0; t < tokens; ++t) {
    cpu::RmsNorm(want.data() + t * stride, dim, heads, dim, w.data(), 1e-6f, want.data() + t * stride, dim);
  }
  DeviceBuffer<bf16> dx(x), dw(w);
  ASSERT_TRUE(HeadRmsNorm(dx.get(), stride, tokens, heads, dim, dw.get(), 1e-6f, nullptr).ok());
  EXPECT_LE(MaxUlps(dx.Download(), want), 1.0);  // the padding past the heads is untouched too
}

TEST(CudaKernelsTest, RopeWithYarnIsBitIdentical) {
  MOE_REQUIRE_CUDA_DEVICE();
  cpu::RopeParams params;
  params.theta = 1e6;
  params.type = "yarn";
  params.factor = 4.0;
  params.original_max_position_embeddings = 256;
  const int64_t dim = 128, max_pos = 1024, tokens = 9, heads = 4, stride = heads * dim;
  const cpu::RopeTable table = cpu::BuildRopeTable(params, dim, max_pos);
  std::vector<int64_t> positions = {0, 1, 2, 255, 256, 511, 700, 1022, 1023};
  std::vector<bf16> x = RandomBf16(tokens * stride, 5, 2.0f);
  DeviceBuffer<bf16> dx(x), dcos(table.cos), dsin(table.sin);
  DeviceBuffer<int64_t> dpos(positions);
  cpu::ApplyRope(x.data(), stride, tokens, heads, positions.data(), table);
  ASSERT_TRUE(ApplyRope(dx.get(), stride, tokens, heads, dpos.get(),
                        DeviceRopeTable{dcos.get(), dsin.get(), dim, max_pos}, nullptr)
                  .ok());
  EXPECT_EQ(MaxUlps(dx.Download(), x), 0.0);
}

TEST(CudaKernelsTest, AddIsBitIdenticalAndSiluMulWithinOneUlp) {
  MOE_REQUIRE_CUDA_DEVICE();
  const int64_t n = 100003;
  const std::vector<bf16> a = RandomBf16(n, 6, 4.0f), b = RandomBf16(n, 7, 4.0f);
  std::vector<bf16> sum(n), act(n);
  cpu::Add(a.data(), b.data(), n, sum.data());
  cpu::SiluMul(a.data(), b.data(), n, act.data());
  DeviceBuffer<bf16> da(a), db(b), dout(n);
  ASSERT_TRUE(Add(da.get(), db.get(), n, dout.get(), nullptr).ok());
  EXPECT_EQ(MaxUlps(dout.Download(), sum), 0.0);
  ASSERT_TRUE(SiluMul(da.get(), db.get(), n, dout.get(), nullptr).ok());
  EXPECT_LE(MaxUlps(dout.Download(), act), 1.0);
}

TEST(CudaKernelsTest, GateTopKMatchesCpu) {
  MOE_REQUIRE_CUDA_DEVICE();
  const int64_t rows = 67, experts = 128, k = 8;
  std::vector<bf16> logits = RandomBf16(rows * experts, 8, 2.0f);
  logits[3 * experts + 5] = logits[3 * experts + 9] = FloatToBF16(9.0f);  // an exact tie at the top
  for (const bool norm : {true, false}) {
    std::vector<int32_t> want_ids(rows * k);
    std::vector<float> want_w(rows * k);
    cpu::TopKSoftmax(logits.data(), rows, experts, k, norm, want_ids.data(), want_w.data());
    DeviceBuffer<bf16> dl(logits);
    DeviceBuffer<int32_t> ids(rows * k);
    DeviceBuffer<float> weights(rows * k);
    ASSERT_TRUE(TopKSoftmax(dl.get(), rows, experts, k, norm, ids.get(), weights.get(), nullptr).ok());
    EXPECT_EQ(ids.Download(), want_ids);
    const std::vector<float> got_w = weights.Download();
    for (int64_t i = 0; i < rows * k; ++i)
      EXPECT_NEAR(got_w[i], want_w[i], 1e-6f * std::max(1.0f, want_w[i])) << i;
  }
}

TEST(CudaKernelsTest, Fp8ActivationQuantizationIsBitIdentical) {
  MOE_REQUIRE_CUDA_DEVICE();
  const int64_t rows = 6, k = 2048 + 64;  // a partial last group
  std::vector<bf16> x = RandomBf16(rows * k, 9, 5.0f);
  std::fill(x.begin() + 2 * k, x.begin() + 2 * k + 128, bf16{0});  // an all-zero group
  const int64_t groups = (k + 127) / 128, ld = ScaleLeadingDim(rows);
  DeviceBuffer<bf16> dx(x);
  DeviceBuffer<uint8_t> q(rows * k);
  DeviceBuffer<float> scale(ld * groups);
  ASSERT_TRUE(QuantizeFp8PerToken(dx.get(), k, rows, k, q.get(), k, scale.get(), ld, nullptr).ok());
  const std::vector<uint8_t> codes = q.Download();
  const std::vector<float> scales = scale.Download();
  std::vector<float> aq(groups * 128), s(groups);
  for (int64_t m = 0; m < rows; ++m) {
    cpu::internal::QuantizeRowFp8(x.data() + m * k, k, aq.data(), s.data());
    for (int64_t g = 0; g < groups; ++g) ASSERT_EQ(scales[g * ld + m], s[g]) << m << "," << g;
    for (int64_t i = 0; i < k; ++i) ASSERT_EQ(Fp8E4M3ToFloat(codes[m * k + i]), aq[i]) << m << "," << i;
  }
}

TEST(CudaKernelsTest, EmbedGathersRows) {
  MOE_REQUIRE_CUDA_DEVICE();
  const int64_t vocab = 50, hidden = 96;
  const std::vector<bf16> table = RandomBf16(vocab * hidden, 10);
  const std::vector<int32_t> ids = {3, 49, 0, 3};
  std::vector<bf16> want(ids.size() * hidden);
  cpu::Embed(table.data(), hidden, ids.data(), static_cast<int64_t>(ids.size()), want.data());
  DeviceBuffer<bf16> dt(table), out(want.size());
  DeviceBuffer<int32_t> di(ids);
  ASSERT_TRUE(
      Embed(dt.get(), vocab, hidden, di.get(), static_cast<int64_t>(ids.size()), out.get(), nullptr).ok());
  EXPECT_EQ(MaxUlps(out.Download(), want), 0.0);
}

// One sequence's prefill (whole, then chunked) and decode against the CPU PagedAttention, on a
// cache whose blocks are scrambled, with GQA (8 query heads on 2 kv heads).
TEST(CudaKernelsTest, PagedAttentionPrefillChunkedAndDecodeMatchCpu) {
  MOE_REQUIRE_CUDA_DEVICE();
  const int64_t block_size = 16, num_blocks = 40, kv_heads = 2, heads = 8, dim = 128;
  const int64_t width = kv_heads * dim, qwidth = heads * dim, total = 300;  // > one split of 256
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  std::vector<int32_t> table(num_blocks);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(11));
  const std::vector<bf16> k = RandomBf16(total * width, 12), v = RandomBf16(total * width, 13),
                          q = RandomBf16(total * qwidth, 14, 2.0f);
  std::vector<bf16> kc(num_blocks * block_size * width), vc(kc.size());
  const cpu::PagedKv cpu_kv{kc.data(), vc.data(), block_size, kv_heads, dim};
  cpu::WriteKv(k.data(), width, v.data(), width, total, 0, table.data(), cpu_kv);
  std::vector<bf16> want(total * qwidth);
  cpu::PagedAttention(q.data(), qwidth, total, 0, heads, scale, table.data(), cpu_kv, want.data(), qwidth);

  DeviceBuffer<bf16> dk(k), dv(v), dq(q), dkc(kc.size()), dvc(vc.size()), out(total * qwidth);
  DeviceBuffer<int32_t> dt(table);
  const DevicePagedKv kv{dkc.get(), dvc.get(), num_blocks, block_size, kv_heads, dim};
  ASSERT_TRUE(WriteKv(dk.get(), width, dv.get(), width, total, 0, dt.get(), kv, nullptr).ok());
  EXPECT_EQ(MaxUlps(dkc.Download(), kc), 0.0);
  EXPECT_EQ(MaxUlps(dvc.Download(), vc), 0.0);
  // Whole prefill.
  ASSERT_TRUE(PagedAttention(dq.get(), qwidth, total, 0, heads, scale, dt.get(), num_blocks, kv, out.get(),
                             qwidth, nullptr)
                  .ok());
  const std::vector<bf16> whole = out.Download();
  EXPECT_LE(RelMaxDiff(whole, want), 1e-2);
  // Chunked: positions 0..99, then 100..298, then a decode step at 299; each chunk's rows must be
  // bit-identical to the whole prefill's (the softmax is over all j <= pos in every case).
  std::vector<bf16> chunked(total * qwidth);
  const int64_t cuts[] = {0, 100, 299, 300};
  for (int i = 0; i < 3; ++i) {
    const int64_t start = cuts[i], n = cuts[i + 1] - cuts[i];
    ASSERT_TRUE(PagedAttention(dq.get() + start * qwidth, qwidth, n, start, heads, scale, dt.get(),
                               num_blocks, kv, out.get() + start * qwidth, qwidth, nullptr)
                    .ok());
  }
  chunked = out.Download();
  EXPECT_EQ(MaxUlps(chunked, whole), 0.0) << "chunked prefill differs from the whole prefill";
}

// Three sequences in one PagedAttentionBatch call (a decode row, a prefill chunk, another decode
// row, interleaved) give the same bits as three PagedAttention calls; a row with a position past
// max_len gets zeros.
TEST(CudaKernelsTest, BatchedAttentionEqualsPerSequenceCalls) {
  MOE_REQUIRE_CUDA_DEVICE();
  const int64_t block_size = 16, num_blocks = 60, kv_heads = 4, heads = 16, dim = 128, table_stride = 20;
  const int64_t width = kv_heads * dim, qwidth = heads * dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  std::vector<int32_t> perm(num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(40));
  std::vector<int32_t> tables(3 * table_stride);  // 20 blocks each, disjoint
  for (int64_t i = 0; i < 3 * table_stride; ++i) tables[i] = perm[i];
  const std::vector<bf16> kc = RandomBf16(num_blocks * block_size * width, 41),
                          vc = RandomBf16(num_blocks * block_size * width, 42);
  DeviceBuffer<bf16> dkc(kc), dvc(vc);
  const DevicePagedKv kv{dkc.get(), dvc.get(), num_blocks, block_size, kv_heads, dim};
  // Rows: seq 0 decode at 300; seq 1 prefill chunk at 10..14; seq 2 decode at 57; then a bad row.
  const std::vector<int32_t> seg = {0, 1, 1, 1, 1, 1, 2, 2};
  const std::vector<int32_t> pos = {300, 10, 11, 12, 13, 14, 57, 999};
  const int64_t rows = static_cast<int64_t>(seg.size()), max_len = 301;
  const std::vector<bf16> q = RandomBf16(rows * qwidth, 43, 2.0f);
  DeviceBuffer<bf16> dq(q), batched(rows * qwidth), single(rows * qwidth);
  DeviceBuffer<int32_t> dseg(seg), dpos(pos), dtables(tables);
  ASSERT_TRUE(PagedAttentionBatch(dq.get(), qwidth, rows, heads, scale, dseg.get(), dpos.get(), max_len,
                                  dtables.get(), table_stride, kv, batched.get(), qwidth, nullptr)
                  .ok());
  ASSERT_TRUE(PagedAttention(dq.get(), qwidth, 1, 300, heads, scale, dtables.get(), table_stride, kv,
                             single.get(), qwidth, nullptr)
                  .ok());
  ASSERT_TRUE(PagedAttention(dq.get() + qwidth, qwidth, 5, 10, heads, scale, dtables.get() + table_stride,
                             table_stride, kv, single.get() + qwidth, qwidth, nullptr)
                  .ok());
  ASSERT_TRUE(PagedAttention(dq.get() + 6 * qwidth, qwidth, 1, 57, heads, scale,
                             dtables.get() + 2 * table_stride, table_stride, kv, single.get() + 6 * qwidth,
                             qwidth, nullptr)
                  .ok());
  const std::vector<bf16> b = batched.Download(), one = single.Download();
  for (int64_t i = 0; i < 7 * qwidth; ++i) ASSERT_EQ(b[i].bits, one[i].bits) << "row " << i / qwidth;
  for (int64_t i = 7 * qwidth; i < 8 * qwidth; ++i) ASSERT_EQ(b[i].bits, 0) << "the row past max_len";
}

// Random FP8 weights: codes that decode to finite values, scales around 1e-2.
LinearWeight RandomFp8(int64_t out, int64_t in, uint32_t seed, std::vector<uint8_t>* codes,
                       std::vector<float>* scales) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 100.0f);
  codes->resize(out * in);
  for (uint8_t& c : *codes) c = FloatToFp8E4M3(dist(rng));
  LinearWeight w{DType::kF8E4M3, out, in, codes->data(), nullptr};
  scales->resize(w.ScaleRows() * w.ScaleCols());
  std::uniform_real_distribution<float> sd(0.5e-2f, 2e-2f);
  for (float& s : *scales) s = sd(rng);
  w.scale_inv = scales->data();
  return w;
}

TEST(CudaKernelsTest, Bf16LinearMatchesCpu) {
  MOE_REQUIRE_CUDA_DEVICE();
  auto blas = Blas::Create();
  ASSERT_TRUE(blas.ok()) << blas.status();
  for (const int64_t rows : {1, 7, 64}) {
    const int64_t in = 512, out = 384, x_stride = 520;
    const std::vector<bf16> x = RandomBf16(rows * x_stride, 15), w = RandomBf16(out * in, 16, 0.05f);
    const LinearWeight cw{DType::kBF16, out, in, w.data(), nullptr};
    std::vector<bf16> want(rows * out);
    cpu::Linear(x.data(), x_stride, rows, cw, want.data(), out);
    DeviceBuffer<bf16> dx(x), dw(w), dy(rows * out);
    const DeviceLinearWeight gw{DType::kBF16, out, in, dw.get(), nullptr};
    const absl::Status st = (*blas)->Linear(dx.get(), x_stride, rows, gw, dy.get(), out, nullptr);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_LE(RelMaxDiff(dy.Download(), want), 2e-2) << rows << " rows";
  }
}

TEST(CudaKernelsTest, Fp8BlockScaledLinearMatchesCpu) {
  MOE_REQUIRE_CUDA_DEVICE();
  auto blas = Blas::Create();
  ASSERT_TRUE(blas.ok()) << blas.status();
  // 384 outputs: 3 scale rows, packed with a leading dimension of 4; 5 rows: a padded activation
  // scale leading dimension too.
  for (const int64_t rows : {1, 5, 8, 130}) {
    const int64_t in = 1024, out = 384;
    std::vector<uint8_t> codes;
    std::vector<float> scales;
    const LinearWeight cw = RandomFp8(out, in, 17, &codes, &scales);
    const std::vector<bf16> x = RandomBf16(rows * in, 18);
    std::vector<bf16> want(rows * out);
    cpu::Linear(x.data(), rows, cw, want.data());
    std::vector<float> packed(PackedWeightScaleCount(out, in));
    PackWeightScales(scales.data(), out, in, packed.data());
    DeviceBuffer<bf16> dx(x), dy(rows * out);
    DeviceBuffer<uint8_t> dw(codes);
    DeviceBuffer<float> ds(packed);
    const DeviceLinearWeight gw{DType::kF8E4M3, out, in, dw.get(), ds.get()};
    const absl::Status st = (*blas)->Linear(dx.get(), in, rows, gw, dy.get(), out, nullptr);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_LE(RelMaxDiff(dy.Download(), want), 5e-2) << rows << " rows";
  }
}

// One MoE round: three experts with 3, 0 and 17 rows; gate and up share x (one quantization).
TEST(CudaKernelsTest, GroupedExpertRoundMatchesCpu) {
  MOE_REQUIRE_CUDA_DEVICE();
  auto blas = Blas::Create();
  ASSERT_TRUE(blas.ok()) << blas.status();
  const int64_t hidden = 256, inter = 128;
  const int64_t rows[] = {3, 0, 17};
  std::vector<std::vector<uint8_t>> codes(6);
  std::vector<std::vector<float>> scales(6);
  std::vector<LinearWeight> cw;
  cw.reserve(6);
  for (int i = 0; i < 6; ++i) cw.push_back(RandomFp8(inter, hidden, 20 + i, &codes[i], &scales[i]));
  std::vector<std::unique_ptr<DeviceBuffer<uint8_t>>> dcodes;
  std::vector<std::unique_ptr<DeviceBuffer<float>>> dscales;
  std::vector<DeviceLinearWeight> gw;
  for (int i = 0; i < 6; ++i) {
    std::vector<float> packed(PackedWeightScaleCount(inter, hidden));
    PackWeightScales(scales[i].data(), inter, hidden, packed.data());
    dcodes.push_back(std::make_unique<DeviceBuffer<uint8_t>>(codes[i]));
    dscales.push_back(std::make_unique<DeviceBuffer<float>>(packed));
    gw.push_back(
        DeviceLinearWeight{DType::kF8E4M3, inter, hidden, dcodes.back()->get(), dscales.back()->get()});
  }
  const int64_t total = 20;
  const std::vector<bf16> x = RandomBf16(total * hidden, 30);
  std::vector<bf16> want(2 * total * inter);
  DeviceBuffer<bf16> dx(x), dy(want.size());
  std::vector<cpu::LinearCall> cpu_calls;
  std::vector<LinearCall> gpu_calls;
  int64_t row0 = 0;
  for (int e = 0; e < 3; ++e) {
    for (int j = 0; j < 2; ++j) {  // gate then up, same x
      const int64_t y_off = (j * total + row0) * inter;
      cpu_calls.push_back(
          {x.data() + row0 * hidden, hidden, rows[e], &cw[2 * e + j], want.data() + y_off, inter});
      gpu_calls.push_back(
          {dx.get() + row0 * hidden, hidden, rows[e], &gw[2 * e + j], dy.get() + y_off, inter});
    }
    row0 += rows[e];
  }
  cpu::LinearGrouped(cpu_calls);
  const absl::Status st = (*blas)->LinearGrouped(gpu_calls, nullptr);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_LE(RelMaxDiff(dy.Download(), want), 5e-2);
}

}  // namespace
}  // namespace moe::kernels::cuda
