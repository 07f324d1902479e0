// An in-process stand-in for NCCL (nccl_api.h), for testing the NCCL transport's protocol on the
// CPU. Several FakeNcclApi instances sharing one FakeNcclHub are the ranks of one or more
// communicators; buffers are host memory.
//
// It keeps the semantics the protocol depends on: CommInitRank completes only once every rank of the
// unique id has joined; the n-th Send from rank a to rank b matches the n-th Recv at b from a, and
// completes (both sides) only when both are posted; Send/Recv issued between GroupStart and GroupEnd
// are posted together at GroupEnd (per thread); a size mismatch fails both communicators
// (ncclInvalidUsage); StreamQuery reports kInProgress while any operation of the communicator is
// unmatched. A dead peer is simply a rank that stops posting: its partners' operations never
// complete, as with real NCCL, until they CommAbort.
#ifndef MOE_COMMON_TRANSPORT_NCCL_FAKE_NCCL_API_H_
#define MOE_COMMON_TRANSPORT_NCCL_FAKE_NCCL_API_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/transport/nccl/nccl_api.h"

namespace moe::transport {

class FakeNcclComm;

class FakeNcclHub {
 public:
  FakeNcclHub() = default;
  FakeNcclHub(const FakeNcclHub&) = delete;
  FakeNcclHub& operator=(const FakeNcclHub&) = delete;

  // Calls made through every FakeNcclApi of this hub.
  int64_t aborts() const;
  int64_t destroys() const;
  int64_t inits() const;
  // Operations posted and not matched yet, over all communicators.
  int64_t pending_operations() const;
  // Makes rank `rank` of communicator `id` report `error` (with `text` as NCCL's last error) from
  // now on, as NCCL does when a network peer fails (ncclRemoteError). False if no such member.
  bool FailCommunicator(const NcclUniqueId& id, int rank, NcclResult error, const std::string& text);

 private:
  friend class FakeNcclApi;
  friend class FakeNcclComm;
  struct Clique {
    int nranks = 0;
    int joined = 0;
    std::map<int, FakeNcclComm*> members;
  };
  struct Op {
    FakeNcclComm* comm = nullptr;
    const void* send_buf = nullptr;
    void* recv_buf = nullptr;
    size_t bytes = 0;
  };
  // (unique id, src rank, dst rank)
  using Channel = std::tuple<std::string, int, int>;

  NcclUniqueId NewId();
  NcclResult Join(FakeNcclComm* comm, int nranks, const NcclUniqueId& id, int rank);
  // Posts one operation; matches it with the oldest opposite one on its channel if there is one.
  void Post(FakeNcclComm* comm, bool is_send, const void* send_buf, void* recv_buf, size_t bytes, int peer);
  NcclResult State(FakeNcclComm* comm, bool stream);
  void Remove(FakeNcclComm* comm, bool abort);

  mutable absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<std::string, Clique> cliques_ ABSL_GUARDED_BY(mu_);
  std::map<Channel, std::deque<Op>> sends_ ABSL_GUARDED_BY(mu_);
  std::map<Channel, std::deque<Op>> recvs_ ABSL_GUARDED_BY(mu_);
  int64_t aborts_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t destroys_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t inits_ ABSL_GUARDED_BY(mu_) = 0;
};

// One process's view of the fake NCCL: give each simulated worker its own (they share the hub).
class FakeNcclApi : public NcclApi {
 public:
  explicit FakeNcclApi(FakeNcclHub* hub) : hub_(hub) {}

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
  NcclResult CommDestroy(NcclComm& comm) override;
  std::string LastError(NcclComm* comm) override;
  absl::StatusOr<void*> AllocBuffer(size_t bytes) override;
  void FreeBuffer(void* buffer) override;
  absl::Status CopyToBuffer(void* buffer, const void* host, size_t bytes) override;
  absl::Status CopyFromBuffer(void* host, const void* buffer, size_t bytes) override;

 private:
  NcclResult Issue(NcclComm& comm, bool is_send, const void* send_buf, void* recv_buf, size_t bytes,
                   int peer);
  FakeNcclHub* hub_;
};

}  // namespace moe::transport

#endif  // MOE_COMMON_TRANSPORT_NCCL_FAKE_NCCL_API_H_
