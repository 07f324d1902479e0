// NcclApi over libnccl and the CUDA runtime (built only when MOE_HAVE_NCCL). Communicators are
// created non-blocking (config.blocking = 0), each with its own non-blocking CUDA stream on the
// device given here; buffers are device memory (cudaMalloc) and the copies are cudaMemcpy.
#ifndef MOE_COMMON_TRANSPORT_NCCL_CUDA_NCCL_API_H_
#define MOE_COMMON_TRANSPORT_NCCL_CUDA_NCCL_API_H_

#include <memory>
#include <string>

#include "common/transport/nccl/nccl_api.h"

namespace moe::transport {

// The number of CUDA devices, 0 when there is no driver or no device.
int CudaDeviceCount();

class CudaNcclApi : public NcclApi {
 public:
  // `device`: the CUDA ordinal every call of this API works on (cudaSetDevice before each).
  explicit CudaNcclApi(int device) : device_(device) {}

  NcclResult GetUniqueId(NcclUniqueId* id) override;
  NcclResult CommInitRank(int nranks, const NcclUniqueId& id, int rank,
                          std::unique_ptr<NcclComm>* comm) override;
  NcclResult CommGetAsyncError(NcclComm& comm, NcclResult* async_error) override;
  NcclResult GroupStart() override;
  NcclResult GroupEnd() override;
  NcclResult Send(NcclComm& comm, const void* buf, size_t bytes, int peer_rank) override;
  NcclResult Recv(NcclComm& comm, void* buf, size_t bytes, int peer_rank) override;
  NcclResult StreamQuery(NcclComm& comm) override;
  NcclResult CommAbort(NcclComm& comm) override;
  // ncclCommFinalize, polled for at most 2 s, then ncclCommDestroy; a communicator that does not
  // settle in that time (a peer gone) is aborted instead, so destroying never hangs.
  NcclResult CommDestroy(NcclComm& comm) override;
  std::string LastError(NcclComm* comm) override;
  absl::StatusOr<void*> AllocBuffer(size_t bytes) override;
  void FreeBuffer(void* buffer) override;
  absl::Status CopyToBuffer(void* buffer, const void* host, size_t bytes) override;
  absl::Status CopyFromBuffer(void* host, const void* buffer, size_t bytes) override;

 private:
  absl::Status SetDevice();
  const int device_;
};

}  // namespace moe::transport

#endif  // MOE_COMMON_TRANSPORT_NCCL_CUDA_NCCL_API_H_
