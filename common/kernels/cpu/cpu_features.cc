#include "common/kernels/cpu/cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "common/kernels/cpu/kernels.h"

namespace moe::kernels::cpu {
namespace {

Isa DetectIsa() {
  const char* env = std::getenv("MOE_KERNEL_ISA");
  if (env != nullptr && std::strcmp(env, "portable") == 0) return Isa::kPortable;
  if (env != nullptr && std::strcmp(env, "avx2fma") == 0 && CpuSupports(Isa::kAvx2Fma)) return Isa::kAvx2Fma;
  if (CpuSupports(Isa::kAvx512Bf16)) return Isa::kAvx512Bf16;
  return CpuSupports(Isa::kAvx2Fma) ? Isa::kAvx2Fma : Isa::kPortable;
}

std::atomic<int>& IsaSlot() {
  static std::atomic<int> slot{static_cast<int>(DetectIsa())};
  return slot;
}

}  // namespace

bool CpuSupports(Isa isa) {
  switch (isa) {
    case Isa::kPortable:
      return true;
    case Isa::kAvx512Bf16:
#if defined(__x86_64__) && defined(__GNUC__)
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512bf16");
#else
      return false;
#endif
    case Isa::kAvx2Fma:
#if defined(__x86_64__) && defined(__GNUC__)
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
      return false;
#endif
  }
  return false;
}

Isa ActiveIsa() {
  return static_cast<Isa>(IsaSlot().load(std::memory_order_relaxed));
}

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kPortable:
      return "portable";
    case Isa::kAvx512Bf16:
      return "avx512bf16";
    case Isa::kAvx2Fma:
      return "avx2fma";
  }
  return "unknown";
}

namespace internal {
void SetIsaForTesting(Isa isa) {
  if (CpuSupports(isa)) IsaSlot().store(static_cast<int>(isa), std::memory_order_relaxed);
}
}  // namespace internal

const char* KernelIsa() {
  return IsaName(ActiveIsa());
}

}  // namespace moe::kernels::cpu
