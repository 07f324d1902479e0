// Wire format of the MoE data-plane hop (dispatch and combine share it):
//
//   u32 magic 'MOE1' | u16 version (1 or 2) | u8 dtype (1 = bf16) | u8 reserved | u32 hidden |
//   u32 num_groups | num_groups x { i32 expert, u32 num_rows } | rows: sum(num_rows) x hidden bf16
//   | version 2 only: u64 expert_nanos
//
// Version 2 is version 1 plus an 8-byte trailer: how long the expert worker held the round (from
// taking the dispatch to sending the answer), which an expert worker stamps on its combine answer
// (StampExpertTime) so the attention worker can split its wait into expert time and transport
// (docs/metrics.md). Dispatches are version 1; both versions decode.
//
// A dispatch holds, per local expert of the receiving expert worker (ascending expert id), the token
// rows routed to it; the combine answer holds the expert outputs in exactly the same order. All
// integers little-endian (the only byte order we run on; checked at compile time).
#ifndef MOE_COMMON_TRANSPORT_MOE_MESSAGE_H_
#define MOE_COMMON_TRANSPORT_MOE_MESSAGE_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/tensor/bf16.h"

namespace moe::transport {

struct ExpertGroup {
  int32_t expert = 0;    // global expert id
  int32_t num_rows = 0;  // token rows for this expert
};

struct MoeMessageView {
  int64_t hidden = 0;
  std::vector<ExpertGroup> groups;
  const bf16* rows = nullptr;  // [total_rows, hidden], points into the payload
  int64_t total_rows = 0;
  // Version 2: the expert worker's time for the round (its trailer); nullopt for version 1.
  std::optional<absl::Duration> expert_time;
};

// Bytes an encoded version-1 message occupies (version 2 adds kExpertTimeBytes).
size_t MoeMessageSize(int64_t hidden, size_t num_groups, int64_t total_rows);
// The most bytes one round's message (dispatch or combine) between an attention worker stepping at
// most `max_tokens` tokens and an expert worker hosting `hosted_experts` experts can take: each
// token sends at most min(top_k, hosted_experts) rows (one per routed expert), in at most
// hosted_experts groups, plus the version-2 trailer. Saturates at SIZE_MAX instead of overflowing.
size_t MaxMoeMessageSize(int64_t hidden, int64_t hosted_experts, int64_t top_k, int64_t max_tokens);
// Writes the header and group table into `out` (resized to MoeMessageSize) and returns a pointer
// to where the rows go ([total_rows, hidden] bf16), for the caller to fill without another copy.
// `out` may be a buffer reused from an earlier message: its capacity is kept (only bytes past its
// old size are zeroed by the resize, and the rows are the caller's to overwrite), and it reserves
// kExpertTimeBytes more, so that StampExpertTime never reallocates (nor copies) the message.
bf16* EncodeMoeMessageHeader(int64_t hidden, std::span<const ExpertGroup> groups,
                             std::vector<std::byte>* out);
// The version-2 trailer's size.
inline constexpr size_t kExpertTimeBytes = 8;
// Turns a version-1 message that EncodeMoeMessageHeader wrote (and whose rows are filled) into
// version 2 carrying `expert_time` (clamped to [0, 2^63) ns), in place: the room for the trailer was
// reserved by EncodeMoeMessageHeader. INVALID_ARGUMENT, leaving `message` as it was, when it is not a
// version-1 message.
absl::Status StampExpertTime(absl::Duration expert_time, std::vector<std::byte>* message);
// Validates magic, version, dtype, sizes (no out-of-bounds read for any input) and returns a view.
absl::StatusOr<MoeMessageView> DecodeMoeMessage(std::span<const std::byte> payload);

}  // namespace moe::transport

#endif  // MOE_COMMON_TRANSPORT_MOE_MESSAGE_H_
