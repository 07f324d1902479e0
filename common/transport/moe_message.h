// Wire format of the MoE data-plane hop (dispatch and combine share it):
//
//   u32 magic 'MOE1' | u16 version (1) | u8 dtype (1 = bf16) | u8 reserved | u32 hidden |
//   u32 num_groups | num_groups x { i32 expert, u32 num_rows } | rows: sum(num_rows) x hidden bf16
//
// A dispatch holds, per local expert of the receiving expert worker (ascending expert id), the token
// rows routed to it; the combine answer holds the expert outputs in exactly the same order. All
// integers little-endian (the only byte order we run on; checked at compile time).
#ifndef MOE_COMMON_TRANSPORT_MOE_MESSAGE_H_
#define MOE_COMMON_TRANSPORT_MOE_MESSAGE_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
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
};

// Bytes an encoded message occupies.
size_t MoeMessageSize(int64_t hidden, size_t num_groups, int64_t total_rows);
// The most bytes one round's message (dispatch or combine) between an attention worker stepping at
// most `max_tokens` tokens and an expert worker hosting `hosted_experts` experts can take: each
// token sends at most min(top_k, hosted_experts) rows (one per routed expert), in at most
// hosted_experts groups. Saturates at SIZE_MAX instead of overflowing.
size_t MaxMoeMessageSize(int64_t hidden, int64_t hosted_experts, int64_t top_k, int64_t max_tokens);
// Writes the header and group table into `out` (resized to MoeMessageSize) and returns a pointer
// to where the rows go ([total_rows, hidden] bf16), for the caller to fill without another copy.
bf16* EncodeMoeMessageHeader(int64_t hidden, std::span<const ExpertGroup> groups,
                             std::vector<std::byte>* out);
// Validates magic, version, dtype, sizes (no out-of-bounds read for any input) and returns a view.
absl::StatusOr<MoeMessageView> DecodeMoeMessage(std::span<const std::byte> payload);

}  // namespace moe::transport

#endif  // MOE_COMMON_TRANSPORT_MOE_MESSAGE_H_
