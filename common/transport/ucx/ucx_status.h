// absl::Status from UCX status codes (ucs_status_t). The message always carries
// ucs_status_string() so a log line names what UCX saw.
#ifndef MOE_COMMON_TRANSPORT_UCX_UCX_STATUS_H_
#define MOE_COMMON_TRANSPORT_UCX_UCX_STATUS_H_

#include "absl/strings/string_view.h"

#include <ucs/type/status.h>

#include "absl/status/status.h"

namespace moe::transport {

// OK for UCS_OK (and UCS_INPROGRESS, which is not an error). Otherwise the code follows what the
// caller can do about it: peer/connection loss and timeouts -> UNAVAILABLE (retryable), cancelled
// requests -> CANCELLED, out of memory/resources -> RESOURCE_EXHAUSTED, bad parameters ->
// INVALID_ARGUMENT, unsupported -> UNIMPLEMENTED, everything else -> INTERNAL.
// The message is "<context>: <ucs_status_string(status)>".
absl::Status UcsStatusToStatus(ucs_status_t status, absl::string_view context);

// True for the UCS codes that mean "the remote side is gone or unreachable".
bool IsUcsPeerFailure(ucs_status_t status);

}  // namespace moe::transport

#endif  // MOE_COMMON_TRANSPORT_UCX_UCX_STATUS_H_
