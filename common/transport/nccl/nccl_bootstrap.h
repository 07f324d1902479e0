// What every member of an NCCL communicator must agree on before joining it: the unique id, the
// generation, and which data-plane peer holds which NCCL rank. One member (the one that owns the
// membership) makes it, and it travels to the others over the gRPC rendezvous as the opaque bytes of
// EncodeNcclBootstrap (ExpertControl/JoinNccl: docs/data-plane.md#nccl-rendezvous). When a member
// restarts, a new bootstrap (new unique id, next generation, the new rank map) goes to every member,
// and each calls NcclTransport::Rebuild with it: the survivors keep running.
#ifndef MOE_COMMON_TRANSPORT_NCCL_NCCL_BOOTSTRAP_H_
#define MOE_COMMON_TRANSPORT_NCCL_NCCL_BOOTSTRAP_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/transport/nccl/nccl_api.h"

namespace moe::transport {

inline constexpr size_t kMaxNcclRanks = 4096;

struct NcclBootstrap {
  NcclUniqueId unique_id;
  // Increases with every rebuild (from 1): a transport refuses a generation it has already passed,
  // so a late, stale bootstrap cannot pull it back into a dead communicator.
  uint64_t generation = 0;
  // peers[r] is the data-plane peer id (activation_transport.h) holding NCCL rank r.
  std::vector<int32_t> peers;

  friend bool operator==(const NcclBootstrap&, const NcclBootstrap&) = default;
};

// OK, or INVALID_ARGUMENT naming the field: no peers, more than kMaxNcclRanks, a peer listed twice,
// a negative peer id, generation 0.
absl::Status ValidateNcclBootstrap(const NcclBootstrap& bootstrap);

// A self-describing byte string (magic, version, generation, ranks, unique id) for a `bytes` field.
std::string EncodeNcclBootstrap(const NcclBootstrap& bootstrap);
// INVALID_ARGUMENT naming what is wrong (length, magic, counts) or what ValidateNcclBootstrap says.
absl::StatusOr<NcclBootstrap> DecodeNcclBootstrap(std::string_view bytes);

}  // namespace moe::transport

#endif  // MOE_COMMON_TRANSPORT_NCCL_NCCL_BOOTSTRAP_H_
