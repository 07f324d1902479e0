#include "common/rpc/worker_main/data_plane_flags.h"

#include <utility>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "common/engine/expert_compute_factory.h"
#include "common/transport/nccl/transport_choice.h"

ABSL_FLAG(std::string, ucx_tls, "", "UCX transports (e.g. tcp, sm); empty: UCX_TLS or UCX's default");
ABSL_FLAG(std::string, ucx_poll_spin_us, "auto",
          "how long a data-plane receiver busy-polls UCX before it sleeps: auto (spins only while recent "
          "answers came within tens of microseconds), microseconds in [1, 10000] (a fixed spin), or 0 "
          "(never) (docs/data-plane.md#small-message-latency)");

namespace moe::rpc {

absl::StatusOr<WorkerDataPlane> ParseWorkerDataPlaneFlags(const WorkerDataPlaneFlags& flags) {
  WorkerDataPlane out;
  auto device = kernels::ParseDeviceSpec(flags.device, "--device");
  if (!device.ok()) return device.status();
  out.device = *device;
  if (absl::Status s = engine::CheckComputeDevice(out.device, "--device"); !s.ok()) return s;
  if (absl::Status s =
          transport::CheckTransportChoice(flags.transport, out.device.is_cuda(), transport::BuiltWithNccl());
      !s.ok()) {
    return s;
  }
  if (flags.transport == "nccl") {
    auto api = engine::CreateNcclApi(out.device, "--transport");
    if (!api.ok()) return api.status();
    out.nccl_api = *std::move(api);
  }
  out.ucx.tls = flags.ucx_tls;
  auto poll_spin = transport::ParsePollSpinFlag(flags.ucx_poll_spin_us, "--ucx_poll_spin_us");
  if (!poll_spin.ok()) return poll_spin.status();
  out.ucx.poll_spin = *poll_spin;
  return out;
}

absl::StatusOr<WorkerDataPlane> WorkerDataPlaneFromFlags(std::string device, std::string transport) {
  return ParseWorkerDataPlaneFlags({.device = std::move(device),
                                    .transport = std::move(transport),
                                    .ucx_tls = absl::GetFlag(FLAGS_ucx_tls),
                                    .ucx_poll_spin_us = absl::GetFlag(FLAGS_ucx_poll_spin_us)});
}

}  // namespace moe::rpc
