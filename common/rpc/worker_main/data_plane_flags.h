// The two workers' device and data-plane flags: one check and set-up shared by
// moe-attention-worker's and moe-expert-worker's main.cc, beside ServiceMain
// (common/rpc/service_main.h), so that both refuse the same values with the same words and build
// the NCCL data plane the same way.
//
// Flags defined here, common to both workers: --ucx_tls and --ucx_poll_spin_us. --device and
// --transport stay in each main.cc (their help says what the device runs and whose data plane it
// is), which passes their values:
//
//   auto data_plane = moe::rpc::WorkerDataPlaneFromFlags(absl::GetFlag(FLAGS_device),
//                                                        absl::GetFlag(FLAGS_transport));
//   if (!data_plane.ok()) return service->Fail(data_plane.status());
//
// Not part of moe_rpc: the router links that and must not link the engine (docs/architecture.md).
#ifndef MOE_COMMON_RPC_WORKER_MAIN_DATA_PLANE_FLAGS_H_
#define MOE_COMMON_RPC_WORKER_MAIN_DATA_PLANE_FLAGS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/kernels/device_spec.h"
#include "common/transport/nccl/nccl_api.h"
#include "common/transport/ucx/ucx_options.h"

namespace moe::rpc {

// The flags' values as given (the MOE_* environment fallback already applied).
struct WorkerDataPlaneFlags {
  std::string device;            // --device: cpu, cuda or cuda:N
  std::string transport;         // --transport: ucx or nccl
  std::string ucx_tls;           // --ucx_tls: empty for UCX_TLS or UCX's default
  std::string ucx_poll_spin_us;  // --ucx_poll_spin_us: auto or microseconds in [0, 10000]
};

// What they choose, for the worker's options.
struct WorkerDataPlane {
  kernels::DeviceSpec device;
  // --transport nccl: NCCL's calls from the CUDA backend plugin (engine::CreateNcclApi; no binary
  // links a CUDA or NCCL library); null for ucx. The worker uses it and does not own it: keep this
  // alive longer than the worker.
  std::unique_ptr<transport::NcclApi> nccl_api;
  // Default UcxOptions with --ucx_tls and --ucx_poll_spin_us.
  transport::UcxOptions ucx;
};

// Checks the values in this order, each error naming its flag, and builds what they choose:
//  --device: a spelling kernels::ParseDeviceSpec accepts (INVALID_ARGUMENT), a device this build and
//    machine have (engine::CheckComputeDevice: FAILED_PRECONDITION);
//  --transport: one the device can use (transport::CheckTransportChoice: ucx with any device, nccl
//    with cuda in a build with NCCL) and, for nccl, that engine::CreateNcclApi can load
//    (FAILED_PRECONDITION);
//  --ucx_poll_spin_us: transport::ParsePollSpinFlag (INVALID_ARGUMENT).
absl::StatusOr<WorkerDataPlane> ParseWorkerDataPlaneFlags(const WorkerDataPlaneFlags& flags);

// ParseWorkerDataPlaneFlags with this file's --ucx_tls and --ucx_poll_spin_us.
absl::StatusOr<WorkerDataPlane> WorkerDataPlaneFromFlags(std::string device, std::string transport);

}  // namespace moe::rpc

#endif  // MOE_COMMON_RPC_WORKER_MAIN_DATA_PLANE_FLAGS_H_
