#include "common/transport/nccl/cuda_nccl_api.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace moe::transport {
namespace {

static_assert(sizeof(ncclUniqueId) == kNcclUniqueIdBytes);
static_assert(static_cast<int>(NcclResult::kInProgress) == ncclInProgress);
static_assert(static_cast<int>(NcclResult::kRemoteError) == ncclRemoteError);

class CudaNcclComm : public NcclComm {
 public:
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
};

CudaNcclComm& Cast(NcclComm& comm) {
  return static_cast<CudaNcclComm&>(comm);
}
NcclResult From(ncclResult_t r) {
  return static_cast<NcclResult>(r);
}

void ReleaseStream(CudaNcclComm& c) {
  if (c.stream != nullptr) cudaStreamDestroy(c.stream);
  c.stream = nullptr;
}

}  // namespace

int CudaDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

absl::Status CudaNcclApi::SetDevice() {
  const cudaError_t e = cudaSetDevice(device_);
  if (e != cudaSuccess) {
    return absl::FailedPreconditionError(absl::StrCat("CUDA device ", device_, ": ", cudaGetErrorString(e),
                                                      " (", CudaDeviceCount(), " devices)"));
  }
  return absl::OkStatus();
}

NcclResult CudaNcclApi::GetUniqueId(NcclUniqueId* id) {
  ncclUniqueId raw;
  const ncclResult_t r = ncclGetUniqueId(&raw);
  if (r == ncclSuccess) std::memcpy(id->bytes.data(), raw.internal, kNcclUniqueIdBytes);
  return From(r);
}

NcclResult CudaNcclApi::CommInitRank(int nranks, const NcclUniqueId& id, int rank,
                                     std::unique_ptr<NcclComm>* comm) {
  if (!SetDevice().ok()) return NcclResult::kUnhandledCudaError;
  auto c = std::make_unique<CudaNcclComm>();
  if (cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking) != cudaSuccess) {
    return NcclResult::kUnhandledCudaError;
  }
  ncclUniqueId raw;
  std::memcpy(raw.internal, id.bytes.data(), kNcclUniqueIdBytes);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  const ncclResult_t r = ncclCommInitRankConfig(&c->comm, nranks, raw, rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    if (c->comm != nullptr) ncclCommAbort(c->comm);
    ReleaseStream(*c);
    return From(r);
  }
  *comm = std::move(c);
  return From(r);
}

NcclResult CudaNcclApi::CommGetAsyncError(NcclComm& comm, NcclResult* async_error) {
  ncclResult_t state = ncclSuccess;
  const ncclResult_t r = ncclCommGetAsyncError(Cast(comm).comm, &state);
  *async_error = From(state);
  return From(r);
}

NcclResult CudaNcclApi::GroupStart() {
  return From(ncclGroupStart());
}
NcclResult CudaNcclApi::GroupEnd() {
  return From(ncclGroupEnd());
}

NcclResult CudaNcclApi::Send(NcclComm& comm, const void* buf, size_t bytes, int peer_rank) {
  CudaNcclComm& c = Cast(comm);
  return From(ncclSend(buf, bytes, ncclUint8, peer_rank, c.comm, c.stream));
}

NcclResult CudaNcclApi::Recv(NcclComm& comm, void* buf, size_t bytes, int peer_rank) {
  CudaNcclComm& c = Cast(comm);
  return From(ncclRecv(buf, bytes, ncclUint8, peer_rank, c.comm, c.stream));
}

NcclResult CudaNcclApi::StreamQuery(NcclComm& comm) {
  const cudaError_t e = cudaStreamQuery(Cast(comm).stream);
  if (e == cudaSuccess) return NcclResult::kSuccess;
  if (e == cudaErrorNotReady) return NcclResult::kInProgress;
  return NcclResult::kUnhandledCudaError;
}

NcclResult CudaNcclApi::CommAbort(NcclComm& comm) {
  CudaNcclComm& c = Cast(comm);
  ncclResult_t r = ncclSuccess;
  if (c.comm != nullptr) r = ncclCommAbort(c.comm);
  c.comm = nullptr;
  ReleaseStream(c);
  return From(r);
}

NcclResult CudaNcclApi::CommDestroy(NcclComm& comm) {
  CudaNcclComm& c = Cast(comm);
  if (c.comm == nullptr) return NcclResult::kSuccess;
  ncclResult_t r = ncclCommFinalize(c.comm);
  const absl::Time give_up = absl::Now() + absl::Seconds(2);
  ncclResult_t state = r;
  while (state == ncclInProgress && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(1));
    if (ncclCommGetAsyncError(c.comm, &state) != ncclSuccess) break;
  }
  if (state == ncclSuccess) {
    r = ncclCommDestroy(c.comm);
  } else {
    r = ncclCommAbort(c.comm);
  }
  c.comm = nullptr;
  ReleaseStream(c);
  return From(r);
}

std::string CudaNcclApi::LastError(NcclComm* comm) {
  const char* text = ncclGetLastError(comm == nullptr ? nullptr : Cast(*comm).comm);
  return text == nullptr ? "" : text;
}

absl::StatusOr<void*> CudaNcclApi::AllocBuffer(size_t bytes) {
  if (absl::Status s = SetDevice(); !s.ok()) return s;
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return absl::ResourceExhaustedError(
        absl::StrCat("cudaMalloc of ", bytes, " bytes on device ", device_, ": ", cudaGetErrorString(e)));
  }
  return p;
}

void CudaNcclApi::FreeBuffer(void* buffer) {
  if (SetDevice().ok()) cudaFree(buffer);
}

absl::Status CudaNcclApi::CopyToBuffer(void* buffer, const void* host, size_t bytes) {
  if (absl::Status s = SetDevice(); !s.ok()) return s;
  const cudaError_t e = cudaMemcpy(buffer, host, bytes, cudaMemcpyHostToDevice);
  if (e != cudaSuccess)
    return absl::InternalError(absl::StrCat("cudaMemcpy to device: ", cudaGetErrorString(e)));
  return absl::OkStatus();
}

absl::Status CudaNcclApi::CopyFromBuffer(void* host, const void* buffer, size_t bytes) {
  if (absl::Status s = SetDevice(); !s.ok()) return s;
  const cudaError_t e = cudaMemcpy(host, buffer, bytes, cudaMemcpyDeviceToHost);
  if (e != cudaSuccess)
    return absl::InternalError(absl::StrCat("cudaMemcpy to host: ", cudaGetErrorString(e)));
  return absl::OkStatus();
}

}  // namespace moe::transport
