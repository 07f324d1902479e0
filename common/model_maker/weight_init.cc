#include "common/model_maker/weight_init.h"

#include <algorithm>
#include <thread>
#include <vector>

namespace moe::model_maker {
namespace {
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
// sqrt(3) / 65536 rounded to float: scales the centred sum of four 16-bit lanes to unit variance.
constexpr float kLaneScale = 1.7320508075688772f / 65536.0f;
}  // namespace

uint64_t SplitMix64Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t Fnv1a64(std::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

uint64_t TensorKey(uint64_t seed, std::string_view tensor_name) {
  return SplitMix64Mix(SplitMix64Mix(seed + kGolden) ^ Fnv1a64(tensor_name));
}

float InitNormal(uint64_t key, uint64_t index) {
  const uint64_t r = SplitMix64Mix(key + (index + 1) * kGolden);
  const int32_t sum =
      static_cast<int32_t>((r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48));
  return static_cast<float>(sum - 131070) * kLaneScale;
}

void FillNormal(uint64_t key, uint64_t first, int64_t n, float mean, float std, float* dst) {
  for (int64_t j = 0; j < n; ++j) {
    const float scaled = std * InitNormal(key, first + static_cast<uint64_t>(j));
    dst[j] = mean + scaled;
  }
}

void ParallelFor(int64_t n, int64_t min_chunk, int threads, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int64_t chunks =
      std::max<int64_t>(1, std::min<int64_t>(threads, n / std::max<int64_t>(min_chunk, 1)));
  if (chunks == 1) {
    fn(0, n);
    return;
  }
  std::vector<std::thread> workers;
  workers.reserve(chunks - 1);
  const int64_t per = (n + chunks - 1) / chunks;
  for (int64_t c = 1; c < chunks; ++c) {
    const int64_t begin = c * per, end = std::min(n, begin + per);
    if (begin < end) workers.emplace_back(fn, begin, end);
  }
  fn(0, std::min(n, per));
  for (std::thread& t : workers) t.join();
}

}  // namespace moe::model_maker
