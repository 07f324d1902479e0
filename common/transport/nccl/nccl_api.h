// The NCCL calls the NCCL data plane makes (docs/data-plane.md#nccl-transport), behind a narrow
// interface so that the protocol in nccl_transport.h runs against either libnccl + the CUDA runtime
// (cuda_nccl_api.h, built only when MOE_HAVE_NCCL) or an in-process fake (fake_nccl_api.h, for the
// CPU tests). Nothing here includes nccl.h or cuda_runtime.h.
//
// The shape follows NCCL's own API: a communicator is created non-blocking (ncclCommInitRankConfig
// with config.blocking = 0) and polled with CommGetAsyncError; point-to-point Send/Recv are issued
// between GroupStart/GroupEnd (per thread, as in NCCL) on the communicator's own stream, whose
// completion StreamQuery reports without blocking. Every call returns an NcclResult; none blocks on
// a peer.
#ifndef MOE_COMMON_TRANSPORT_NCCL_NCCL_API_H_
#define MOE_COMMON_TRANSPORT_NCCL_NCCL_API_H_

#include <array>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moe::transport {

inline constexpr size_t kNcclUniqueIdBytes = 128;  // NCCL_UNIQUE_ID_BYTES

// ncclUniqueId's bytes: made by one member (NcclApi::GetUniqueId), carried to the others over the
// gRPC rendezvous (nccl_bootstrap.h).
struct NcclUniqueId {
  std::array<char, kNcclUniqueIdBytes> bytes{};
  friend bool operator==(const NcclUniqueId&, const NcclUniqueId&) = default;
};

// ncclResult_t, same values.
enum class NcclResult : int {
  kSuccess = 0,
  kUnhandledCudaError = 1,
  kSystemError = 2,
  kInternalError = 3,
  kInvalidArgument = 4,
  kInvalidUsage = 5,
  kRemoteError = 6,
  kInProgress = 7,
};
const char* NcclResultName(NcclResult result);

// One communicator and the stream its operations run on; made and freed by one NcclApi.
class NcclComm {
 public:
  virtual ~NcclComm() = default;
};

class NcclApi {
 public:
  virtual ~NcclApi() = default;

  virtual NcclResult GetUniqueId(NcclUniqueId* id) = 0;

  // Starts joining the communicator `id` as `rank` of `nranks` without blocking (blocking = 0):
  // kInProgress (or kSuccess) with *comm set; the communicator is usable once CommGetAsyncError
  // reports kSuccess, which needs every rank to have joined.
  virtual NcclResult CommInitRank(int nranks, const NcclUniqueId& id, int rank,
                                  std::unique_ptr<NcclComm>* comm) = 0;
  // The communicator's state: kSuccess, kInProgress (initializing, or a group still being
  // enqueued), or the error an asynchronous operation hit.
  virtual NcclResult CommGetAsyncError(NcclComm& comm, NcclResult* async_error) = 0;

  virtual NcclResult GroupStart() = 0;
  // kSuccess or kInProgress (non-blocking communicators: poll CommGetAsyncError).
  virtual NcclResult GroupEnd() = 0;
  // `bytes` bytes (ncclUint8) from/into buffer memory (AllocBuffer), on the communicator's stream.
  virtual NcclResult Send(NcclComm& comm, const void* buf, size_t bytes, int peer_rank) = 0;
  virtual NcclResult Recv(NcclComm& comm, void* buf, size_t bytes, int peer_rank) = 0;

  // Whether the work issued on the communicator's stream has finished: kSuccess (done),
  // kInProgress (not yet), anything else: the stream failed. Never blocks (cudaStreamQuery).
  virtual NcclResult StreamQuery(NcclComm& comm) = 0;

  // Kills the communicator's pending operations and frees it without waiting for peers. After
  // either call the communicator must not be used again.
  virtual NcclResult CommAbort(NcclComm& comm) = 0;
  // Frees an idle communicator.
  virtual NcclResult CommDestroy(NcclComm& comm) = 0;

  // NCCL's last error text (for status messages); `comm` may be null.
  virtual std::string LastError(NcclComm* comm) = 0;

  // Memory Send/Recv work on (device memory for the real API, host memory for the fake), and
  // synchronous copies between it and host memory.
  virtual absl::StatusOr<void*> AllocBuffer(size_t bytes) = 0;
  virtual void FreeBuffer(void* buffer) = 0;
  virtual absl::Status CopyToBuffer(void* buffer, const void* host, size_t bytes) = 0;
  virtual absl::Status CopyFromBuffer(void* host, const void* buffer, size_t bytes) = 0;
};

}  // namespace moe::transport

#endif  // MOE_COMMON_TRANSPORT_NCCL_NCCL_API_H_
