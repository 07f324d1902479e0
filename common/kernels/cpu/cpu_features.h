// Run-time choice of the instruction set the CPU kernels use.
#ifndef MOE_COMMON_KERNELS_CPU_CPU_FEATURES_H_
#define MOE_COMMON_KERNELS_CPU_CPU_FEATURES_H_

namespace moe::kernels::cpu {

enum class Isa {
  kPortable,    // plain C++, any x86-64 (or other) CPU
  kAvx512Bf16,  // AVX-512 F/BW/VL/DQ + BF16 (Sapphire Rapids, Zen 4 and later)
  kAvx2Fma,     // AVX2 + FMA without AVX-512 BF16 (Haswell to Alder Lake, Zen 1-3)
};

// The ISA this process uses: the best one the CPU supports (avx512bf16, then avx2fma), or a
// lesser one the environment variable MOE_KERNEL_ISA names ("portable", "avx2fma"). Decided once, on first
// use, so that one process never mixes paths (the paths may round differently; see kernels.h).
Isa ActiveIsa();
const char* IsaName(Isa isa);
// Whether this CPU can run `isa`.
bool CpuSupports(Isa isa);

namespace internal {
// Tests only: switch the path (must be supported by the CPU). Not thread safe against running
// kernels.
void SetIsaForTesting(Isa isa);
}  // namespace internal

}  // namespace moe::kernels::cpu

#endif  // MOE_COMMON_KERNELS_CPU_CPU_FEATURES_H_
