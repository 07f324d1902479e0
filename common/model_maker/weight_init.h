// Deterministic pseudo-random weights for `moectl make-model`: version-stable (integer hashing
// plus one float multiply-add, no libm), counter-based so any element of any tensor can be
// generated independently and therefore in parallel.
//
// Generator (stable across versions; changing it changes every made model):
//   SplitMix64 finaliser  Mix(z) = z ^= z >> 30, z *= 0xBF58476D1CE4E5B9, z ^= z >> 27,
//                                 z *= 0x94D049BB133111EB, z ^= z >> 31
//   tensor key            K = Mix(Mix(seed + 0x9E3779B97F4A7C15) ^ FNV1a64(tensor name))
//   element i's 64 bits   R = Mix(K + (i + 1) * 0x9E3779B97F4A7C15)   (SplitMix64's i-th output)
//   sample                z = (h0 + h1 + h2 + h3 - 131070) * (sqrt(3) / 65536)   (float32)
//                         where h0..h3 are R's four 16-bit lanes: an Irwin-Hall(4) variate,
//                         mean 0, variance 1 (up to 2^-32), bounded by |z| < 2*sqrt(3).
//   value                 mean + std * z in float32 (compiled with -ffp-contract=off).
// Element i of a [rows, cols] tensor is row-major index r * cols + c.
#ifndef MOE_COMMON_MODEL_MAKER_WEIGHT_INIT_H_
#define MOE_COMMON_MODEL_MAKER_WEIGHT_INIT_H_

#include <cstdint>
#include <functional>
#include <string_view>

namespace moe::model_maker {

uint64_t SplitMix64Mix(uint64_t z);
uint64_t Fnv1a64(std::string_view bytes);
uint64_t TensorKey(uint64_t seed, std::string_view tensor_name);
// Sample i of the stream `key`: approximately N(0, 1), see the file comment.
float InitNormal(uint64_t key, uint64_t index);
// dst[j] = mean + std * InitNormal(key, first + j) for j in [0, n).
void FillNormal(uint64_t key, uint64_t first, int64_t n, float mean, float std, float* dst);

// Runs fn(begin, end) over [0, n) split into contiguous chunks on up to `threads` threads
// (0 = all cores). Chunks are at least `min_chunk` long; runs inline when one chunk suffices.
void ParallelFor(int64_t n, int64_t min_chunk, int threads, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace moe::model_maker

#endif  // MOE_COMMON_MODEL_MAKER_WEIGHT_INIT_H_
