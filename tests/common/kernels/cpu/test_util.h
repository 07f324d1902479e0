// Helpers for the CPU kernel tests: deterministic random data and bit-exact comparison.
#ifndef MOE_TESTS_COMMON_KERNELS_CPU_TEST_UTIL_H_
#define MOE_TESTS_COMMON_KERNELS_CPU_TEST_UTIL_H_

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "common/tensor/bf16.h"

namespace moe::kernels::cpu::testing {

inline std::vector<bf16> RandomBf16(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<bf16> v(n);
  for (bf16& x : v) x = FloatToBF16(dist(rng));
  return v;
}

inline bool SameBits(const std::vector<bf16>& a, const std::vector<bf16>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(bf16)) == 0;
}

// Index of the first element whose bits differ, or -1.
inline int64_t FirstDifference(const std::vector<bf16>& a, const std::vector<bf16>& b) {
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (a[i].bits != b[i].bits) return static_cast<int64_t>(i);
  }
  return a.size() == b.size() ? -1 : static_cast<int64_t>(std::min(a.size(), b.size()));
}

}  // namespace moe::kernels::cpu::testing

#endif  // MOE_TESTS_COMMON_KERNELS_CPU_TEST_UTIL_H_
