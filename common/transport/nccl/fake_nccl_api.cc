#include "common/transport/nccl/fake_nccl_api.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

namespace moe::transport {

// A communicator of the fake. Its fields are guarded by the hub's mutex.
class FakeNcclComm : public NcclComm {
 public:
  std::string key;
  int rank = 0;
  int nranks = 0;
  int64_t outstanding = 0;  // posted, unmatched operations
  NcclResult error = NcclResult::kSuccess;
  std::string last_error;
  bool gone = false;  // aborted or destroyed
};

namespace {

// What GroupStart..GroupEnd collected on this thread (NCCL's groups are per thread too).
struct PendingOp {
  FakeNcclHub* hub;
  FakeNcclComm* comm;
  bool is_send;
  const void* send_buf;
  void* recv_buf;
  size_t bytes;
  int peer;
};
thread_local int group_depth = 0;
thread_local std::vector<PendingOp> group_ops;

}  // namespace

int64_t FakeNcclHub::aborts() const {
  absl::MutexLock lock(&mu_);
  return aborts_;
}
int64_t FakeNcclHub::destroys() const {
  absl::MutexLock lock(&mu_);
  return destroys_;
}
int64_t FakeNcclHub::inits() const {
  absl::MutexLock lock(&mu_);
  return inits_;
}
int64_t FakeNcclHub::pending_operations() const {
  absl::MutexLock lock(&mu_);
  int64_t n = 0;
  for (const auto& [channel, ops] : sends_) n += static_cast<int64_t>(ops.size());
  for (const auto& [channel, ops] : recvs_) n += static_cast<int64_t>(ops.size());
  return n;
}

bool FakeNcclHub::FailCommunicator(const NcclUniqueId& id, int rank, NcclResult error,
                                   const std::string& text) {
  absl::MutexLock lock(&mu_);
  auto it = cliques_.find(std::string(id.bytes.data(), id.bytes.size()));
  if (it == cliques_.end()) return false;
  auto member = it->second.members.find(rank);
  if (member == it->second.members.end()) return false;
  member->second->error = error;
  member->second->last_error = text;
  return true;
}

NcclUniqueId FakeNcclHub::NewId() {
  absl::MutexLock lock(&mu_);
  NcclUniqueId id;
  const std::string text = absl::StrCat("fake-nccl-", next_id_++);
  std::memcpy(id.bytes.data(), text.data(), text.size());
  return id;
}

NcclResult FakeNcclHub::Join(FakeNcclComm* comm, int nranks, const NcclUniqueId& id, int rank) {
  absl::MutexLock lock(&mu_);
  ++inits_;
  if (nranks < 1 || rank < 0 || rank >= nranks) return NcclResult::kInvalidArgument;
  comm->key.assign(id.bytes.data(), id.bytes.size());
  comm->rank = rank;
  comm->nranks = nranks;
  Clique& clique = cliques_[comm->key];
  if (clique.nranks == 0) clique.nranks = nranks;
  if (clique.nranks != nranks || clique.members.contains(rank)) return NcclResult::kInvalidUsage;
  clique.members[rank] = comm;
  ++clique.joined;
  return NcclResult::kInProgress;
}

void FakeNcclHub::Post(FakeNcclComm* comm, bool is_send, const void* send_buf, void* recv_buf, size_t bytes,
                       int peer) {
  absl::MutexLock lock(&mu_);
  if (comm->gone) return;
  const Channel channel =
      is_send ? Channel{comm->key, comm->rank, peer} : Channel{comm->key, peer, comm->rank};
  auto& opposite = is_send ? recvs_[channel] : sends_[channel];
  if (opposite.empty()) {
    auto& mine = is_send ? sends_[channel] : recvs_[channel];
    mine.push_back(Op{comm, send_buf, recv_buf, bytes});
    ++comm->outstanding;
    return;
  }
  Op other = opposite.front();
  opposite.pop_front();
  --other.comm->outstanding;
  const size_t send_bytes = is_send ? bytes : other.bytes;
  const size_t recv_bytes = is_send ? other.bytes : bytes;
  if (send_bytes != recv_bytes) {
    for (FakeNcclComm* c : {comm, other.comm}) {
      c->error = NcclResult::kInvalidUsage;
      c->last_error =
          absl::StrCat("fake NCCL: send of ", send_bytes, " bytes matched a recv of ", recv_bytes);
    }
    return;
  }
  const void* src = is_send ? send_buf : other.send_buf;
  void* dst = is_send ? other.recv_buf : recv_buf;
  if (bytes > 0) std::memcpy(dst, src, bytes);
}

NcclResult FakeNcclHub::State(FakeNcclComm* comm, bool stream) {
  absl::MutexLock lock(&mu_);
  if (comm->gone) return NcclResult::kInvalidUsage;
  if (comm->error != NcclResult::kSuccess) return comm->error;
  if (!stream) {
    const Clique& clique = cliques_[comm->key];
    return clique.joined == clique.nranks ? NcclResult::kSuccess : NcclResult::kInProgress;
  }
  return comm->outstanding == 0 ? NcclResult::kSuccess : NcclResult::kInProgress;
}

void FakeNcclHub::Remove(FakeNcclComm* comm, bool abort) {
  absl::MutexLock lock(&mu_);
  ++(abort ? aborts_ : destroys_);
  if (comm->gone) return;
  comm->gone = true;
  for (auto* table : {&sends_, &recvs_}) {
    for (auto& [channel, ops] : *table) {
      std::erase_if(ops, [comm](const Op& op) { return op.comm == comm; });
    }
  }
  auto it = cliques_.find(comm->key);
  if (it != cliques_.end()) {
    it->second.members.erase(comm->rank);
    // The id stays known (joined keeps counting), so a rank cannot rejoin a torn-down communicator.
  }
}

NcclResult FakeNcclApi::GetUniqueId(NcclUniqueId* id) {
  *id = hub_->NewId();
  return NcclResult::kSuccess;
}

NcclResult FakeNcclApi::CommInitRank(int nranks, const NcclUniqueId& id, int rank,
                                     std::unique_ptr<NcclComm>* comm) {
  auto fake = std::make_unique<FakeNcclComm>();
  const NcclResult r = hub_->Join(fake.get(), nranks, id, rank);
  if (r != NcclResult::kInProgress) return r;
  *comm = std::move(fake);
  return r;
}

NcclResult FakeNcclApi::CommGetAsyncError(NcclComm& comm, NcclResult* async_error) {
  *async_error = hub_->State(static_cast<FakeNcclComm*>(&comm), /*stream=*/false);
  return NcclResult::kSuccess;
}

NcclResult FakeNcclApi::GroupStart() {
  ++group_depth;
  return NcclResult::kSuccess;
}

NcclResult FakeNcclApi::GroupEnd() {
  if (group_depth == 0) return NcclResult::kInvalidUsage;
  if (--group_depth > 0) return NcclResult::kSuccess;
  std::vector<PendingOp> ops;
  ops.swap(group_ops);
  for (const PendingOp& op : ops)
    op.hub->Post(op.comm, op.is_send, op.send_buf, op.recv_buf, op.bytes, op.peer);
  // A non-blocking communicator's group may still be enqueueing when GroupEnd returns.
  return ops.empty() ? NcclResult::kSuccess : NcclResult::kInProgress;
}

NcclResult FakeNcclApi::Issue(NcclComm& comm, bool is_send, const void* send_buf, void* recv_buf,
                              size_t bytes, int peer) {
  auto* fake = static_cast<FakeNcclComm*>(&comm);
  if (peer < 0 || peer >= fake->nranks) return NcclResult::kInvalidArgument;
  if (bytes > 0 && (is_send ? send_buf == nullptr : recv_buf == nullptr)) return NcclResult::kInvalidArgument;
  if (group_depth > 0) {
    group_ops.push_back(PendingOp{hub_, fake, is_send, send_buf, recv_buf, bytes, peer});
  } else {
    hub_->Post(fake, is_send, send_buf, recv_buf, bytes, peer);
  }
  return NcclResult::kSuccess;
}

NcclResult FakeNcclApi::Send(NcclComm& comm, const void* buf, size_t bytes, int peer_rank) {
  return Issue(comm, true, buf, nullptr, bytes, peer_rank);
}

NcclResult FakeNcclApi::Recv(NcclComm& comm, void* buf, size_t bytes, int peer_rank) {
  return Issue(comm, false, nullptr, buf, bytes, peer_rank);
}

NcclResult FakeNcclApi::StreamQuery(NcclComm& comm) {
  return hub_->State(static_cast<FakeNcclComm*>(&comm), /*stream=*/true);
}

NcclResult FakeNcclApi::CommAbort(NcclComm& comm) {
  hub_->Remove(static_cast<FakeNcclComm*>(&comm), /*abort=*/true);
  return NcclResult::kSuccess;
}

NcclResult FakeNcclApi::CommDestroy(NcclComm& comm) {
  hub_->Remove(static_cast<FakeNcclComm*>(&comm), /*abort=*/false);
  return NcclResult::kSuccess;
}

std::string FakeNcclApi::LastError(NcclComm* comm) {
  if (comm == nullptr) return "";
  absl::MutexLock lock(&hub_->mu_);
  return static_cast<FakeNcclComm*>(comm)->last_error;
}

absl::StatusOr<void*> FakeNcclApi::AllocBuffer(size_t bytes) {
  return static_cast<void*>(new std::byte[bytes ? bytes : 1]);
}

void FakeNcclApi::FreeBuffer(void* buffer) {
  delete[] static_cast<std::byte*>(buffer);
}

absl::Status FakeNcclApi::CopyToBuffer(void* buffer, const void* host, size_t bytes) {
  if (bytes > 0) std::memcpy(buffer, host, bytes);
  return absl::OkStatus();
}

absl::Status FakeNcclApi::CopyFromBuffer(void* host, const void* buffer, size_t bytes) {
  if (bytes > 0) std::memcpy(host, buffer, bytes);
  return absl::OkStatus();
}

}  // namespace moe::transport
