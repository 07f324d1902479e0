// What UcxTransport puts on the wire (docs/data-plane.md): the Active Message ids, the data
// message's header (the whole MessageTag), the goodbye message's header, and the framing of the
// worker address that peers exchange over gRPC. Little-endian (the only byte order we run on, as
// moe_message.h), copied with memcpy so alignment never matters.
//
// Thread safety: pure functions.
#ifndef MOE_COMMON_TRANSPORT_UCX_UCX_WIRE_H_
#define MOE_COMMON_TRANSPORT_UCX_UCX_WIRE_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include "common/transport/activation_transport.h"

namespace moe::transport::ucx {

// Active Message ids of this protocol.
inline constexpr unsigned kDataAmId = 1;
inline constexpr unsigned kGoodbyeAmId = 2;

// The AM header of a data message: magic, version and the whole MessageTag.
struct WireHeader {
  uint32_t magic;
  uint8_t version;
  uint8_t kind;
  uint16_t reserved;
  int32_t sender;
  uint32_t layer;
  uint32_t micro_batch;
  uint32_t reserved2;
  uint64_t step;
};
static_assert(std::is_trivially_copyable_v<WireHeader> && sizeof(WireHeader) == 32);

WireHeader EncodeHeader(const MessageTag& tag);
// False for a header of the wrong size, magic, version or kind (never delivered).
bool DecodeHeader(const void* header, size_t length, MessageTag* tag);

// The goodbye AM's header: who leaves, and which incarnation of it (so a late goodbye from a
// peer's previous incarnation cannot mark its restarted successor as failed).
struct Goodbye {
  int32_t sender = 0;
  uint64_t instance = 0;
};
using GoodbyeBytes = std::array<uint8_t, 16>;
GoodbyeBytes EncodeGoodbye(const Goodbye& goodbye);
// nullopt for a header of the wrong size.
std::optional<Goodbye> DecodeGoodbye(const void* header, size_t length);

// The worker address exchanged over gRPC: "MUXA" | u32 blob length | u64 instance | UCX's address
// blob, so that Connect rejects a truncated or unrelated string before UCX parses it, and learns
// which incarnation of the peer it connects to.
std::string FrameWorkerAddress(std::string_view ucx_blob, uint64_t instance);
struct ParsedWorkerAddress {
  std::string ucx_blob;  // a copy: aligned for ucp_ep_create
  uint64_t instance = 0;
};
// nullopt unless `address` is exactly what FrameWorkerAddress produced.
std::optional<ParsedWorkerAddress> ParseWorkerAddress(std::string_view address);

// A random id for one transport object, carried in its address and its goodbyes.
uint64_t NewInstanceId();

}  // namespace moe::transport::ucx

#endif  // MOE_COMMON_TRANSPORT_UCX_UCX_WIRE_H_
