// Device selection for the expert side: builds one shard's ExpertCompute for `--device
// cpu|cuda[:N]` (the CPU ExpertBlock or, in CUDA builds, CudaExpertBlock), and checks at start
// that a device spec can be used on this machine and build. The CUDA side of both seams (this one and
// forward_pass.h's CheckEngineDevice / CreateCudaForwardPass, defined in the .cc) comes from the
// CUDA backend plugin (compute/cuda_backend_plugin.h).
#ifndef MOE_COMMON_ENGINE_EXPERT_COMPUTE_FACTORY_H_
#define MOE_COMMON_ENGINE_EXPERT_COMPUTE_FACTORY_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/engine/compute/expert_compute.h"
#include "common/kernels/device_spec.h"
#include "common/model/config.h"
#include "common/model/weights.h"
#include "common/transport/nccl/nccl_api.h"

namespace moe::engine {

// True when this build has the CUDA backend (MOE_WITH_CUDA found nvcc).
bool BuiltWithCuda();

// OK for cpu; for cuda:N, OK when this build has CUDA and device N exists, else
// FAILED_PRECONDITION naming `flag` and the device (no CUDA in this build; no driver; only M
// devices).
absl::Status CheckComputeDevice(const kernels::DeviceSpec& device, absl::string_view flag = "--device");

// The NCCL data plane's real calls (transport::CudaNcclApi over libnccl, on `device`'s ordinal),
// from the CUDA backend plugin, so that no binary links NCCL or the CUDA runtime itself
// (compute/cuda_backend_plugin.h says why). FAILED_PRECONDITION naming `flag`: `device` is not
// cuda, this build has no CUDA or its plugin no NCCL, the plugin cannot be loaded, or the device
// does not exist (no driver, too few devices).
absl::StatusOr<std::unique_ptr<transport::NcclApi>> CreateNcclApi(const kernels::DeviceSpec& device,
                                                                  absl::string_view flag = "--transport");

// One shard's expert compute on `device`, for an expert worker. cpu: an ExpertBlock
// (LoadExpertBlock), whose background copy into huge pages, if MOE_WEIGHTS_MEMORY asks for one,
// starts at once. cuda:N: uploads them to device N (CudaExpertBlock) and releases the host copy.
// CheckComputeDevice's errors, and the upload's (RESOURCE_EXHAUSTED when the shard does not fit).
absl::StatusOr<std::unique_ptr<ExpertCompute>> CreateExpertCompute(
    const model::ModelConfig& config, std::unique_ptr<model::ExpertShardWeights> weights,
    const kernels::DeviceSpec& device);

}  // namespace moe::engine

#endif  // MOE_COMMON_ENGINE_EXPERT_COMPUTE_FACTORY_H_
