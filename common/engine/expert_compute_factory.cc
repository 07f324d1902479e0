#include "common/engine/expert_compute_factory.h"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/engine/compute/cuda_backend_plugin.h"
#include "common/engine/expert_block.h"
#include "common/engine/forward_pass.h"
#include "common/model/weights.h"
#include "common/status/status_macros.h"

namespace moe::engine {
namespace {

#if MOE_HAVE_CUDA
// The CUDA backend plugin's entry points, or why it could not be loaded.
struct CudaPlugin {
  absl::Status status;
  CudaBackendCheckDeviceFn check_device = nullptr;
  CudaExpertsCreateFn create = nullptr;
  CudaForwardCreateFn create_forward = nullptr;
  CudaNcclApiCreateFn create_nccl_api = nullptr;  // null: the plugin was built without NCCL
};

// Where the plugin may be: $MOE_CUDA_BACKEND_PLUGIN; <binary dir>/../lib and <binary dir> (a build
// tree's bin/ and lib/, an install's /usr/local/bin and /usr/local/lib); then the loader's path.
std::vector<std::string> PluginCandidates() {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("MOE_CUDA_BACKEND_PLUGIN"); env != nullptr && *env != '\0') {
    candidates.push_back(env);
    return candidates;
  }
  char exe[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n > 0) {
    std::string dir(exe, static_cast<size_t>(n));
    dir = dir.substr(0, dir.rfind('/'));
    candidates.push_back(absl::StrCat(dir, "/../lib/", kCudaBackendPluginFile));
    candidates.push_back(absl::StrCat(dir, "/", kCudaBackendPluginFile));
  }
  candidates.push_back(kCudaBackendPluginFile);
  return candidates;
}

CudaPlugin LoadCudaPlugin() {
  CudaPlugin plugin;
  std::vector<std::string> errors;
  void* handle = nullptr;
  for (const std::string& path : PluginCandidates()) {
    handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle != nullptr) break;
    const char* error = dlerror();
    errors.push_back(error != nullptr ? error : path);
  }
  if (handle == nullptr) {
    plugin.status = absl::FailedPreconditionError(absl::StrCat(
        "the CUDA backend plugin ", kCudaBackendPluginFile,
        " could not be loaded (set MOE_CUDA_BACKEND_PLUGIN to its path): ", absl::StrJoin(errors, "; ")));
    return plugin;
  }
  auto abi = reinterpret_cast<CudaBackendAbiFn>(dlsym(handle, "moe_cuda_backend_abi"));
  plugin.check_device =
      reinterpret_cast<CudaBackendCheckDeviceFn>(dlsym(handle, "moe_cuda_backend_check_device"));
  plugin.create = reinterpret_cast<CudaExpertsCreateFn>(dlsym(handle, "moe_cuda_experts_create"));
  plugin.create_forward = reinterpret_cast<CudaForwardCreateFn>(dlsym(handle, "moe_cuda_forward_create"));
  plugin.create_nccl_api = reinterpret_cast<CudaNcclApiCreateFn>(dlsym(handle, "moe_cuda_nccl_api_create"));
  if (abi == nullptr || plugin.check_device == nullptr || plugin.create == nullptr ||
      plugin.create_forward == nullptr || abi() != kCudaBackendPluginAbi) {
    plugin.status = absl::FailedPreconditionError(absl::StrCat(
        "the CUDA backend plugin ", kCudaBackendPluginFile,
        " is from another build (its entry points or ABI version ", kCudaBackendPluginAbi, " do not match)"));
  }
  // Never unloaded: blocks made by it may live until exit.
  return plugin;
}

// Loaded once, on first use, thread-safely.
const CudaPlugin& Plugin() {
  static const CudaPlugin* const plugin = new CudaPlugin(LoadCudaPlugin());
  return *plugin;
}
#endif

}  // namespace

bool BuiltWithCuda() {
#if MOE_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

absl::Status CheckComputeDevice(const kernels::DeviceSpec& device, absl::string_view flag) {
  if (!device.is_cuda()) return absl::OkStatus();
#if MOE_HAVE_CUDA
  const CudaPlugin& plugin = Plugin();
  if (!plugin.status.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat(flag, " ", device.ToString(), ": ", plugin.status.message()));
  }
  absl::Status status;
  plugin.check_device(device.ordinal, std::string(flag).c_str(), &status);
  return status;
#else
  return absl::FailedPreconditionError(absl::StrCat(flag, " ", device.ToString(),
                                                    ": this build has no CUDA support (configure with "
                                                    "-DMOE_WITH_CUDA=ON where nvcc is installed)"));
#endif
}

absl::StatusOr<std::unique_ptr<transport::NcclApi>> CreateNcclApi(const kernels::DeviceSpec& device,
                                                                  absl::string_view flag) {
  if (!device.is_cuda()) {
    return absl::FailedPreconditionError(
        absl::StrCat(flag, ": nccl moves GPU memory and needs --device cuda[:N], not ", device.ToString()));
  }
#if MOE_HAVE_CUDA
  const CudaPlugin& plugin = Plugin();
  if (!plugin.status.ok())
    return absl::FailedPreconditionError(absl::StrCat(flag, ": nccl: ", plugin.status.message()));
  if (plugin.create_nccl_api == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(flag, ": nccl: the CUDA backend plugin ", kCudaBackendPluginFile,
                     " was built without NCCL (configure with -DMOE_WITH_NCCL=ON where NCCL is installed)"));
  }
  absl::StatusOr<std::unique_ptr<transport::NcclApi>> api =
      absl::InternalError("the CUDA backend plugin answered nothing");
  plugin.create_nccl_api(device.ordinal, std::string(flag).c_str(), &api);
  return api;
#else
  return absl::FailedPreconditionError(absl::StrCat(
      flag,
      ": nccl: this build has no CUDA support (configure with -DMOE_WITH_CUDA=ON where nvcc is installed)"));
#endif
}

absl::StatusOr<std::unique_ptr<ExpertCompute>> CreateExpertCompute(
    const model::ModelConfig& config, std::unique_ptr<model::ExpertShardWeights> weights,
    const kernels::DeviceSpec& device) {
  RETURN_IF_ERROR(CheckComputeDevice(device));
  if (!device.is_cuda()) {
    // An expert worker: the copy starts once loaded, to be done before its traffic comes.
    bool in_background = false;
    std::unique_ptr<ExpertBlock> block = LoadExpertBlock(config, std::move(weights), &in_background);
    if (in_background) block->SwitchToHugePagesInBackground();
    return block;
  }
#if MOE_HAVE_CUDA
  absl::StatusOr<std::unique_ptr<ExpertCompute>> block =
      absl::InternalError("the CUDA backend plugin answered nothing");
  Plugin().create(&config, weights.get(), device.ordinal, &block);
  return block;
#else
  return absl::InternalError("unreachable: CheckComputeDevice accepted CUDA without CUDA");
#endif
}

absl::Status CheckEngineDevice(const kernels::DeviceSpec& device) {
  return CheckComputeDevice(device, "--device");
}

absl::StatusOr<std::unique_ptr<ForwardPass>> CreateCudaForwardPass(const model::ModelConfig& config,
                                                                   const model::DenseWeights& weights,
                                                                   MoeDispatcher* dispatcher,
                                                                   const CudaForwardOptions& options) {
  RETURN_IF_ERROR(CheckComputeDevice(options.device));
#if MOE_HAVE_CUDA
  absl::StatusOr<std::unique_ptr<ForwardPass>> forward =
      absl::InternalError("the CUDA backend plugin answered nothing");
  Plugin().create_forward(&config, &weights, dispatcher, &options, &forward);
  return forward;
#else
  return absl::InternalError("unreachable: CheckComputeDevice accepted CUDA without CUDA");
#endif
}

}  // namespace moe::engine
