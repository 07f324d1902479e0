#include "common/transport/nccl/nccl_bootstrap.h"

#include <cstring>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace moe::transport {
namespace {

constexpr std::string_view kMagic = "MOENCCL1";  // the trailing digit is the format version

void PutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t GetU64(std::string_view in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(in[i])) << (8 * i);
  return v;
}

}  // namespace

const char* NcclResultName(NcclResult result) {
  switch (result) {
    case NcclResult::kSuccess:
      return "ncclSuccess";
    case NcclResult::kUnhandledCudaError:
      return "ncclUnhandledCudaError";
    case NcclResult::kSystemError:
      return "ncclSystemError";
    case NcclResult::kInternalError:
      return "ncclInternalError";
    case NcclResult::kInvalidArgument:
      return "ncclInvalidArgument";
    case NcclResult::kInvalidUsage:
      return "ncclInvalidUsage";
    case NcclResult::kRemoteError:
      return "ncclRemoteError";
    case NcclResult::kInProgress:
      return "ncclInProgress";
  }
  return "ncclUnknownResult";
}

absl::Status ValidateNcclBootstrap(const NcclBootstrap& bootstrap) {
  if (bootstrap.generation == 0)
    return absl::InvalidArgumentError("bootstrap.generation: must be at least 1");
  if (bootstrap.peers.empty()) return absl::InvalidArgumentError("bootstrap.peers: empty");
  if (bootstrap.peers.size() > kMaxNcclRanks) {
    return absl::InvalidArgumentError(
        absl::StrCat("bootstrap.peers: ", bootstrap.peers.size(), " ranks, more than ", kMaxNcclRanks));
  }
  absl::flat_hash_set<int32_t> seen;
  for (size_t r = 0; r < bootstrap.peers.size(); ++r) {
    const int32_t peer = bootstrap.peers[r];
    if (peer < 0)
      return absl::InvalidArgumentError(absl::StrCat("bootstrap.peers[", r, "]: negative peer id ", peer));
    if (!seen.insert(peer).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("bootstrap.peers[", r, "]: peer ", peer, " listed twice"));
    }
  }
  return absl::OkStatus();
}

std::string EncodeNcclBootstrap(const NcclBootstrap& bootstrap) {
  std::string out(kMagic);
  PutU64(&out, bootstrap.generation);
  PutU64(&out, bootstrap.peers.size());
  for (int32_t peer : bootstrap.peers) {
    const auto u = static_cast<uint32_t>(peer);
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((u >> (8 * i)) & 0xff));
  }
  out.append(bootstrap.unique_id.bytes.data(), bootstrap.unique_id.bytes.size());
  return out;
}

absl::StatusOr<NcclBootstrap> DecodeNcclBootstrap(std::string_view bytes) {
  const size_t fixed = kMagic.size() + 16 + kNcclUniqueIdBytes;
  if (bytes.size() < fixed) {
    return absl::InvalidArgumentError(
        absl::StrCat("nccl bootstrap: ", bytes.size(), " bytes, shorter than the ", fixed, "-byte minimum"));
  }
  if (bytes.substr(0, kMagic.size()) != kMagic) {
    return absl::InvalidArgumentError(
        "nccl bootstrap: bad magic (not an EncodeNcclBootstrap string, or another version)");
  }
  NcclBootstrap out;
  out.generation = GetU64(bytes.substr(kMagic.size()));
  const uint64_t nranks = GetU64(bytes.substr(kMagic.size() + 8));
  if (nranks > kMaxNcclRanks) {
    return absl::InvalidArgumentError(
        absl::StrCat("nccl bootstrap: ", nranks, " ranks, more than ", kMaxNcclRanks));
  }
  if (bytes.size() != fixed + 4 * nranks) {
    return absl::InvalidArgumentError(absl::StrCat("nccl bootstrap: ", bytes.size(), " bytes, want ",
                                                   fixed + 4 * nranks, " for ", nranks, " ranks"));
  }
  size_t at = kMagic.size() + 16;
  for (uint64_t r = 0; r < nranks; ++r, at += 4) {
    uint32_t u = 0;
    for (int i = 0; i < 4; ++i)
      u |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[at + i])) << (8 * i);
    out.peers.push_back(static_cast<int32_t>(u));
  }
  std::memcpy(out.unique_id.bytes.data(), bytes.data() + at, kNcclUniqueIdBytes);
  if (absl::Status s = ValidateNcclBootstrap(out); !s.ok()) return s;
  return out;
}

}  // namespace moe::transport
