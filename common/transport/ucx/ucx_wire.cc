#include "common/transport/ucx/ucx_wire.h"

#include <sys/random.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"

namespace moe::transport::ucx {
namespace {

constexpr uint32_t kWireMagic = 0x5843554d;  // "MUCX" little-endian
constexpr uint8_t kWireVersion = 2;          // 2: the sender's secret

constexpr char kAddressMagic[4] = {'M', 'U', 'X', 'A'};
constexpr size_t kAddressPrefix = sizeof(kAddressMagic) + sizeof(uint32_t) + 2 * sizeof(uint64_t);

uint64_t Fnv1a(std::string_view bytes) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (char c : bytes) {
    hash ^= static_cast<uint8_t>(c);
    hash *= 0x100000001b3ull;
  }
  return hash;
}

struct GoodbyeHeader {
  int32_t sender;
  uint32_t reserved;
  uint64_t instance;
};
static_assert(sizeof(GoodbyeHeader) == sizeof(GoodbyeBytes));

}  // namespace

PeerSecret NewPeerSecret() {
  PeerSecret secret;
  size_t filled = 0;
  while (filled < secret.size()) {
    const ssize_t n = getrandom(secret.data() + filled, secret.size() - filled, 0);
    if (n > 0) {
      filled += static_cast<size_t>(n);
    } else if (n < 0 && errno != EINTR) {
      // getrandom exists since Linux 3.17 and blocks rather than fail once seeded; should it fail
      // anyway, std::random_device (also the kernel's generator on Linux) fills the rest.
      std::random_device device;
      for (; filled < secret.size(); ++filled) secret[filled] = static_cast<uint8_t>(device());
    }
  }
  return secret;
}

bool SecretsEqual(const PeerSecret& a, const PeerSecret& b) {
  // Accumulates every byte's difference, so the time does not depend on where they differ.
  volatile uint8_t diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff = diff | static_cast<uint8_t>(a[i] ^ b[i]);
  return diff == 0;
}

WireHeader EncodeHeader(const MessageTag& tag, const PeerSecret& secret) {
  WireHeader h{};
  h.magic = kWireMagic;
  h.version = kWireVersion;
  h.kind = static_cast<uint8_t>(tag.kind);
  h.sender = tag.sender;
  h.layer = tag.layer;
  h.micro_batch = tag.micro_batch;
  h.step = tag.step;
  h.secret = secret;
  return h;
}

bool DecodeHeader(const void* header, size_t length, MessageTag* tag, PeerSecret* secret) {
  if (header == nullptr || length != sizeof(WireHeader)) return false;
  WireHeader h;
  std::memcpy(&h, header, sizeof(h));
  if (h.magic != kWireMagic || h.version != kWireVersion) return false;
  if (h.kind > static_cast<uint8_t>(MessageKind::kCombine)) return false;
  tag->kind = static_cast<MessageKind>(h.kind);
  tag->sender = h.sender;
  tag->layer = h.layer;
  tag->micro_batch = h.micro_batch;
  tag->step = h.step;
  *secret = h.secret;
  return true;
}

GoodbyeBytes EncodeGoodbye(const Goodbye& goodbye) {
  const GoodbyeHeader header{goodbye.sender, 0, goodbye.instance};
  GoodbyeBytes bytes;
  std::memcpy(bytes.data(), &header, sizeof(header));
  return bytes;
}

std::optional<Goodbye> DecodeGoodbye(const void* header, size_t length) {
  if (header == nullptr || length != sizeof(GoodbyeHeader)) return std::nullopt;
  GoodbyeHeader h;
  std::memcpy(&h, header, sizeof(h));
  return Goodbye{h.sender, h.instance};
}

std::string FrameWorkerAddress(std::string_view ucx_blob, uint64_t instance) {
  const uint32_t blob_length = static_cast<uint32_t>(ucx_blob.size());
  std::string address(kAddressMagic, sizeof(kAddressMagic));
  address.append(reinterpret_cast<const char*>(&blob_length), sizeof(blob_length));
  address.append(reinterpret_cast<const char*>(&instance), sizeof(instance));
  const uint64_t checksum = Fnv1a(ucx_blob);
  address.append(reinterpret_cast<const char*>(&checksum), sizeof(checksum));
  address.append(ucx_blob);
  return address;
}

absl::StatusOr<ParsedWorkerAddress> ParseWorkerAddress(std::string_view address, uint8_t own_header) {
  if (address.size() <= kAddressPrefix) {
    return absl::InvalidArgumentError(
        absl::StrCat("address: ", address.size(), " bytes is shorter than a framed UCX worker address"));
  }
  if (address.size() > kAddressPrefix + kMaxUcxAddressBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "address: ", address.size(), " bytes exceeds the limit of ", kAddressPrefix + kMaxUcxAddressBytes));
  }
  if (std::memcmp(address.data(), kAddressMagic, sizeof(kAddressMagic)) != 0) {
    return absl::InvalidArgumentError("address: not a UCX worker address from UcxTransport (bad magic)");
  }
  const char* p = address.data() + sizeof(kAddressMagic);
  uint32_t blob_length = 0;
  std::memcpy(&blob_length, p, sizeof(blob_length));
  p += sizeof(blob_length);
  if (blob_length != address.size() - kAddressPrefix) {
    return absl::InvalidArgumentError(absl::StrCat("address: framed length ", blob_length, " but ",
                                                   address.size() - kAddressPrefix, " bytes follow"));
  }
  ParsedWorkerAddress parsed;
  std::memcpy(&parsed.instance, p, sizeof(parsed.instance));
  p += sizeof(parsed.instance);
  uint64_t checksum = 0;
  std::memcpy(&checksum, p, sizeof(checksum));
  const std::string_view blob = address.substr(kAddressPrefix);
  if (checksum != Fnv1a(blob)) return absl::InvalidArgumentError("address: checksum mismatch");
  if (static_cast<uint8_t>(blob[0]) != own_header) {
    return absl::InvalidArgumentError(absl::StrCat(
        "address: UCX address header ", static_cast<int>(static_cast<uint8_t>(blob[0])),
        " differs from ours (", static_cast<int>(own_header), "): another UCX version or configuration"));
  }
  parsed.ucx_blob.assign(blob);
  return parsed;
}

uint64_t NewInstanceId() {
  std::random_device device;
  return (uint64_t{device()} << 32) ^ device() ^
         static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
}

}  // namespace moe::transport::ucx
