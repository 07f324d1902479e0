// The interface between moe_engine and the CUDA backend plugin (libmoe_cuda_backend.so, built from
// common/engine/cuda/ where CUDA is built: CudaAttentionBlock and CudaExpertBlock). The CUDA side is
// a plugin that moe_engine loads with dlopen only when a device is cuda, not a library linked into
// every binary: cuBLASLt carries a 94 KiB static TLS block, and a process linked with it cannot
// create threads with small stacks -- the /metrics server's (civetweb: 100 KiB) fail with EINVAL, so
// every service linked with CUDA lost its /metrics. Loaded later, cuBLASLt's TLS is allocated per
// thread on demand instead.
//
// Both sides are built from one tree by one compiler, so C++ types cross the boundary; the entry
// points are extern "C" only for dlsym. kCudaBackendPluginAbi changes whenever they change.
#ifndef MOE_COMMON_ENGINE_COMPUTE_CUDA_BACKEND_PLUGIN_H_
#define MOE_COMMON_ENGINE_COMPUTE_CUDA_BACKEND_PLUGIN_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/engine/compute/expert_compute.h"
#include "common/model/config.h"
#include "common/model/weights.h"

namespace moe::transport {
class NcclApi;
}  // namespace moe::transport

namespace moe::engine {

class ForwardPass;
class MoeDispatcher;
struct CudaForwardOptions;

inline constexpr int kCudaBackendPluginAbi = 3;
inline constexpr char kCudaBackendPluginFile[] = "libmoe_cuda_backend.so";

// int moe_cuda_backend_abi(): kCudaBackendPluginAbi of the plugin's build.
using CudaBackendAbiFn = int (*)();
// *out = kernels::cuda::CheckDevice(ordinal, flag).
using CudaBackendCheckDeviceFn = void (*)(int ordinal, const char* flag, absl::Status* out);
// *out = CudaExpertBlock::Create(*config, *weights, ordinal).
using CudaExpertsCreateFn = void (*)(const model::ModelConfig* config,
                                     const model::ExpertShardWeights* weights, int ordinal,
                                     absl::StatusOr<std::unique_ptr<ExpertCompute>>* out);
// *out = CudaAttentionBlock::Create(*config, *weights, dispatcher, *options).
using CudaForwardCreateFn = void (*)(const model::ModelConfig* config, const model::DenseWeights* weights,
                                     MoeDispatcher* dispatcher, const CudaForwardOptions* options,
                                     absl::StatusOr<std::unique_ptr<ForwardPass>>* out);

// *out = a transport::CudaNcclApi on device `ordinal` (the NCCL data plane's calls), or
// FAILED_PRECONDITION naming `flag` when there is no such device. Exported as
// moe_cuda_nccl_api_create only by a plugin built with NCCL (MOE_HAVE_NCCL); a plugin without it
// lacks the symbol.
using CudaNcclApiCreateFn = void (*)(int ordinal, const char* flag,
                                     absl::StatusOr<std::unique_ptr<transport::NcclApi>>* out);

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_COMPUTE_CUDA_BACKEND_PLUGIN_H_
