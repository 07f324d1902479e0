#include "common/transport/moe_message.h"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace moe::transport {
namespace {

static_assert(std::endian::native == std::endian::little, "the wire format is little-endian");

constexpr uint32_t kMagic = 0x3145'4f4d;  // "MOE1"
constexpr uint16_t kVersion = 1;
constexpr uint16_t kVersionWithExpertTime = 2;
constexpr uint8_t kDTypeBf16 = 1;
constexpr size_t kHeaderBytes = 4 + 2 + 1 + 1 + 4 + 4;
constexpr size_t kGroupBytes = 8;

template <typename T>
void Put(std::byte*& p, T v) {
  std::memcpy(p, &v, sizeof(T));
  p += sizeof(T);
}
template <typename T>
T Get(const std::byte*& p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  p += sizeof(T);
  return v;
}

}  // namespace

size_t MoeMessageSize(int64_t hidden, size_t num_groups, int64_t total_rows) {
  return kHeaderBytes + num_groups * kGroupBytes +
         static_cast<size_t>(total_rows) * static_cast<size_t>(hidden) * sizeof(bf16);
}

size_t MaxMoeMessageSize(int64_t hidden, int64_t hosted_experts, int64_t top_k, int64_t max_tokens) {
  if (hidden <= 0 || hosted_experts <= 0 || top_k <= 0 || max_tokens <= 0) {
    return kHeaderBytes + kExpertTimeBytes;
  }
  const unsigned __int128 rows =
      static_cast<unsigned __int128>(max_tokens) * static_cast<uint64_t>(std::min(top_k, hosted_experts));
  const unsigned __int128 bytes = kHeaderBytes + kExpertTimeBytes +
                                  static_cast<unsigned __int128>(hosted_experts) * kGroupBytes +
                                  rows * static_cast<uint64_t>(hidden) * sizeof(bf16);
  return bytes > SIZE_MAX ? SIZE_MAX : static_cast<size_t>(bytes);
}

bf16* EncodeMoeMessageHeader(int64_t hidden, std::span<const ExpertGroup> groups,
                             std::vector<std::byte>* out) {
  int64_t total_rows = 0;
  for (const ExpertGroup& g : groups) total_rows += g.num_rows;
  const size_t size = MoeMessageSize(hidden, groups.size(), total_rows);
  out->reserve(size + kExpertTimeBytes);  // StampExpertTime's trailer: no reallocation then
  out->resize(size);
  std::byte* p = out->data();
  Put<uint32_t>(p, kMagic);
  Put<uint16_t>(p, kVersion);
  Put<uint8_t>(p, kDTypeBf16);
  Put<uint8_t>(p, 0);
  Put<uint32_t>(p, static_cast<uint32_t>(hidden));
  Put<uint32_t>(p, static_cast<uint32_t>(groups.size()));
  for (const ExpertGroup& g : groups) {
    Put<int32_t>(p, g.expert);
    Put<uint32_t>(p, static_cast<uint32_t>(g.num_rows));
  }
  return reinterpret_cast<bf16*>(p);
}

absl::Status StampExpertTime(absl::Duration expert_time, std::vector<std::byte>* message) {
  absl::StatusOr<MoeMessageView> view = DecodeMoeMessage(*message);
  if (!view.ok()) return view.status();
  if (view->expert_time.has_value()) return absl::InvalidArgumentError("moe message: already stamped");
  const int64_t nanos = std::max<int64_t>(0, absl::ToInt64Nanoseconds(expert_time));
  std::byte* version = message->data() + 4;
  std::memcpy(version, &kVersionWithExpertTime, sizeof(kVersionWithExpertTime));
  const size_t end = message->size();
  message->resize(end + kExpertTimeBytes);
  std::byte* p = message->data() + end;
  Put<uint64_t>(p, static_cast<uint64_t>(nanos));
  return absl::OkStatus();
}

absl::StatusOr<MoeMessageView> DecodeMoeMessage(std::span<const std::byte> payload) {
  if (payload.size() < kHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("moe message of ", payload.size(), " bytes is shorter than its header"));
  }
  const std::byte* p = payload.data();
  const uint32_t magic = Get<uint32_t>(p);
  const uint16_t version = Get<uint16_t>(p);
  const uint8_t dtype = Get<uint8_t>(p);
  Get<uint8_t>(p);
  const uint32_t hidden = Get<uint32_t>(p);
  const uint32_t num_groups = Get<uint32_t>(p);
  if (magic != kMagic) return absl::InvalidArgumentError("moe message: bad magic");
  if (version != kVersion && version != kVersionWithExpertTime) {
    return absl::InvalidArgumentError(absl::StrCat("moe message: unsupported version ", version));
  }
  std::optional<absl::Duration> expert_time;
  if (version == kVersionWithExpertTime) {
    if (payload.size() < kHeaderBytes + kExpertTimeBytes) {
      return absl::InvalidArgumentError("moe message: version 2 without its expert time");
    }
    const std::byte* trailer = payload.data() + payload.size() - kExpertTimeBytes;
    const uint64_t nanos = Get<uint64_t>(trailer);
    if (nanos > static_cast<uint64_t>(INT64_MAX)) {
      return absl::InvalidArgumentError("moe message: expert time out of range");
    }
    expert_time = absl::Nanoseconds(static_cast<int64_t>(nanos));
    payload = payload.first(payload.size() - kExpertTimeBytes);
  }
  if (dtype != kDTypeBf16) {
    return absl::InvalidArgumentError(absl::StrCat("moe message: unsupported dtype ", dtype));
  }
  const size_t remaining = payload.size() - kHeaderBytes;
  if (num_groups > remaining / kGroupBytes) {
    return absl::InvalidArgumentError("moe message: group table past the end");
  }
  MoeMessageView view;
  view.hidden = hidden;
  view.groups.resize(num_groups);
  uint64_t total_rows = 0;
  for (uint32_t i = 0; i < num_groups; ++i) {
    view.groups[i].expert = Get<int32_t>(p);
    const uint32_t rows = Get<uint32_t>(p);
    if (rows > (1u << 24)) return absl::InvalidArgumentError("moe message: group too large");
    view.groups[i].num_rows = static_cast<int32_t>(rows);
    total_rows += rows;
  }
  const uint64_t row_bytes = total_rows * uint64_t{hidden} * sizeof(bf16);
  if (row_bytes != payload.size() - kHeaderBytes - num_groups * kGroupBytes) {
    return absl::InvalidArgumentError(absl::StrCat("moe message: ", total_rows, " rows of ", hidden, " need ",
                                                   row_bytes, " bytes, payload has ",
                                                   payload.size() - kHeaderBytes - num_groups * kGroupBytes));
  }
  view.rows = reinterpret_cast<const bf16*>(p);
  view.total_rows = static_cast<int64_t>(total_rows);
  view.expert_time = expert_time;
  return view;
}

}  // namespace moe::transport
