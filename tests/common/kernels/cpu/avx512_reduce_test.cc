// The AVX-512 reduction and rounding helpers against their scalar definitions, bit for bit: every
// vector GEMM path is only as exact as these two.
#include "common/kernels/cpu/avx512_reduce.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "common/kernels/cpu/cpu_features.h"
#include "common/kernels/cpu/linear_internal.h"
#include "common/tensor/bf16.h"
#include "gtest/gtest.h"

#if defined(__x86_64__) && defined(__GNUC__)

// GCC 12's AVX-512 headers trip -Wuninitialized on their own setzero/extract helpers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace moe::kernels::cpu {
namespace {

#define TEST_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

TEST_AVX512 void VectorToBF16(const uint32_t* in, uint16_t* out) {
  __m512 v;
  std::memcpy(&v, in, sizeof(v));
  const __m256i r = internal::FloatToBF16x16(v);
  std::memcpy(out, &r, sizeof(r));
}

TEST_AVX512 void VectorReduce(const float* lanes /* [16][16] */, float* out /* [16] */) {
  __m512 v[16];
  for (int i = 0; i < 16; ++i) v[i] = _mm512_loadu_ps(lanes + 16 * i);
  _mm512_storeu_ps(out, internal::Reduce16x16(v));
}

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Every high half (sign, exponent, 7 mantissa bits: all zeros, subnormals, infinities, NaNs) with
// the low halves that decide rounding: exact, just below / at / just above the tie, the top, and
// a random one.
TEST(Avx512ReduceTest, FloatToBF16x16MatchesFloatToBF16) {
  if (!CpuSupports(Isa::kAvx512Bf16)) GTEST_SKIP() << "no AVX-512 BF16";
  std::mt19937 rng(7);
  std::vector<uint32_t> bits;
  for (uint32_t high = 0; high <= 0xffff; ++high) {
    for (uint32_t low :
         {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu, static_cast<uint32_t>(rng() & 0xffffu)}) {
      bits.push_back(high << 16 | low);
    }
  }
  while (bits.size() % 16 != 0) bits.push_back(0);
  int64_t mismatches = 0;
  for (size_t i = 0; i < bits.size(); i += 16) {
    uint16_t got[16];
    VectorToBF16(bits.data() + i, got);
    for (int j = 0; j < 16; ++j) {
      const uint16_t want = FloatToBF16(FromBits(bits[i + j])).bits;
      if (got[j] != want && ++mismatches <= 5) {
        ADD_FAILURE() << std::hex << "0x" << bits[i + j] << ": vector 0x" << got[j] << ", scalar 0x" << want;
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
}

// Lane l of Reduce16x16 is Reduce16 of input l, bit for bit, on sums where the order matters
// (magnitudes 2^-20 to 2^20 of both signs, so most additions round).
TEST(Avx512ReduceTest, Reduce16x16IsReduce16OfEachInput) {
  if (!CpuSupports(Isa::kAvx512Bf16)) GTEST_SKIP() << "no AVX-512 BF16";
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> mantissa(-1.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-20, 20);
  for (int round = 0; round < 200; ++round) {
    float lanes[16 * 16], got[16];
    for (float& f : lanes) f = std::ldexp(mantissa(rng), exponent(rng));
    VectorReduce(lanes, got);
    for (int l = 0; l < 16; ++l) {
      const float want = internal::Reduce16(lanes + 16 * l);
      ASSERT_EQ(std::memcmp(&got[l], &want, sizeof(float)), 0)
          << "round " << round << " lane " << l << ": " << got[l] << " vs " << want;
    }
  }
}

}  // namespace
}  // namespace moe::kernels::cpu

#endif  // x86-64 GCC/Clang
