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

#include "absl/status/statusor.h"
#include "common/transport/activation_transport.h"

namespace moe::transport::ucx {

// Active Message ids of this protocol.
inline constexpr unsigned kDataAmId = 1;
inline constexpr unsigned kGoodbyeAmId = 2;

// The secret a sender carries in every data message to one receiver: 128 random bits the receiver
// made when it admitted that sender (UcxTransport::Admit) and handed it over the authenticated
// control plane (docs/data-plane.md#admission-and-bounds).
inline constexpr size_t kPeerSecretBytes = 16;
using PeerSecret = std::array<uint8_t, kPeerSecretBytes>;
// A fresh secret from the kernel's CSPRNG (getrandom).
PeerSecret NewPeerSecret();
// Equality in time independent of where the secrets differ.
bool SecretsEqual(const PeerSecret& a, const PeerSecret& b);

// The AM header of a data message: magic, version, the whole MessageTag and the sender's secret.
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
  PeerSecret secret;
};
static_assert(std::is_trivially_copyable_v<WireHeader> && sizeof(WireHeader) == 48);

WireHeader EncodeHeader(const MessageTag& tag, const PeerSecret& secret);
// False for a header of the wrong size, magic, version or kind (never delivered).
bool DecodeHeader(const void* header, size_t length, MessageTag* tag, PeerSecret* secret);

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

// The worker address exchanged over gRPC: "MUXA" | u32 blob length | u64 instance | u64 FNV-1a
// checksum of the blob | UCX's address blob, so that Connect rejects a truncated, corrupted or
// unrelated string before UCX parses it (UCX's parser asserts on malformed input and aborts the
// process), and learns which incarnation of the peer it connects to.
inline constexpr size_t kMaxUcxAddressBytes = 64 * 1024;
std::string FrameWorkerAddress(std::string_view ucx_blob, uint64_t instance);
struct ParsedWorkerAddress {
  std::string ucx_blob;  // a copy: aligned for ucp_ep_create
  uint64_t instance = 0;
};
// INVALID_ARGUMENT naming what is wrong unless `address` is exactly what FrameWorkerAddress made
// of a blob of 1 to kMaxUcxAddressBytes bytes whose first byte (UCX's packed-address header:
// address version and flags) equals `own_header`, the first byte of our own worker's address
// (peers run the same UCX build and configuration, so their headers are equal).
absl::StatusOr<ParsedWorkerAddress> ParseWorkerAddress(std::string_view address, uint8_t own_header);

// A random id for one transport object, carried in its address and its goodbyes.
uint64_t NewInstanceId();

}  // namespace moe::transport::ucx

#endif  // MOE_COMMON_TRANSPORT_UCX_UCX_WIRE_H_
