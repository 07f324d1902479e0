// The workers' --transport flag (and moectl's): which data plane a worker may use with which device.
// One check shared by moe-attention-worker, moe-expert-worker and `moectl cluster up`, so all three
// refuse the same combinations with the same words (docs/data-plane.md#nccl-transport).
#ifndef MOE_COMMON_TRANSPORT_NCCL_TRANSPORT_CHOICE_H_
#define MOE_COMMON_TRANSPORT_NCCL_TRANSPORT_CHOICE_H_

#include "absl/strings/string_view.h"

#include "absl/status/status.h"

namespace moe::transport {

// Whether this build found NCCL (MOE_HAVE_NCCL: CudaNcclApi is compiled in).
bool BuiltWithNccl();

// `transport` is the flag's value, `device_is_cuda` whether --device is cuda[:N], `have_nccl` what
// BuiltWithNccl() says (a parameter so that both answers can be tested on one build).
//   ucx: OK with any device.
//   nccl: INVALID_ARGUMENT with --device cpu (NCCL moves GPU memory); FAILED_PRECONDITION in a build
//     without NCCL; otherwise OK (the workers then get NCCL's calls from the CUDA backend plugin,
//     engine::CreateNcclApi, which says FAILED_PRECONDITION when it or the GPU is missing).
//   anything else: INVALID_ARGUMENT naming the accepted values.
// Every message names `flag`.
absl::Status CheckTransportChoice(absl::string_view transport, bool device_is_cuda, bool have_nccl,
                                  absl::string_view flag = "--transport");

}  // namespace moe::transport

#endif  // MOE_COMMON_TRANSPORT_NCCL_TRANSPORT_CHOICE_H_
