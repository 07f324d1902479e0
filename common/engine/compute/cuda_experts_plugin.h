// The interface between moe_engine and the CUDA experts plugin (libmoe_cuda_experts.so, built from
// common/engine/cuda/ where CUDA is built). The CUDA side is a plugin that moe_engine loads with
// dlopen only when a device is cuda, not a library linked into every binary: cuBLASLt carries a
// 94 KiB static TLS block, and a process linked with it cannot create threads with small stacks --
// the /metrics server's (civetweb: 100 KiB) fail with EINVAL, so every service linked with CUDA
// lost its /metrics. Loaded later, cuBLASLt's TLS is allocated per thread on demand instead.
//
// Both sides are built from one tree by one compiler, so C++ types cross the boundary; the entry
// points are extern "C" only for dlsym. kCudaExpertsPluginAbi changes whenever they change.
#ifndef MOE_COMMON_ENGINE_COMPUTE_CUDA_EXPERTS_PLUGIN_H_
#define MOE_COMMON_ENGINE_COMPUTE_CUDA_EXPERTS_PLUGIN_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/engine/compute/expert_compute.h"
#include "common/model/config.h"
#include "common/model/weights.h"

namespace moe::engine {

inline constexpr int kCudaExpertsPluginAbi = 1;
inline constexpr char kCudaExpertsPluginFile[] = "libmoe_cuda_experts.so";

// int moe_cuda_experts_abi(): kCudaExpertsPluginAbi of the plugin's build.
using CudaExpertsAbiFn = int (*)();
// *out = kernels::cuda::CheckDevice(ordinal, flag).
using CudaExpertsCheckDeviceFn = void (*)(int ordinal, const char* flag, absl::Status* out);
// *out = CudaExpertBlock::Create(*config, *weights, ordinal).
using CudaExpertsCreateFn = void (*)(const model::ModelConfig* config,
                                     const model::ExpertShardWeights* weights, int ordinal,
                                     absl::StatusOr<std::unique_ptr<ExpertCompute>>* out);

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_COMPUTE_CUDA_EXPERTS_PLUGIN_H_
