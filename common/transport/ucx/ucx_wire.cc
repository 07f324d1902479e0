#include "common/transport/ucx/ucx_wire.h"

#include <chrono>
#include <cstring>
#include <random>

namespace moe::transport::ucx {
namespace {

constexpr uint32_t kWireMagic = 0x5843554d;  // "MUCX" little-endian
constexpr uint8_t kWireVersion = 1;

constexpr char kAddressMagic[4] = {'M', 'U', 'X', 'A'};
constexpr size_t kAddressPrefix = sizeof(kAddressMagic) + sizeof(uint32_t) + sizeof(uint64_t);

struct GoodbyeHeader {
  int32_t sender;
  uint32_t reserved;
  uint64_t instance;
};
static_assert(sizeof(GoodbyeHeader) == sizeof(GoodbyeBytes));

}  // namespace

WireHeader EncodeHeader(const MessageTag& tag) {
  WireHeader h{};
  h.magic = kWireMagic;
  h.version = kWireVersion;
  h.kind = static_cast<uint8_t>(tag.kind);
  h.sender = tag.sender;
  h.layer = tag.layer;
  h.micro_batch = tag.micro_batch;
  h.step = tag.step;
  return h;
}

bool DecodeHeader(const void* header, size_t length, MessageTag* tag) {
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
  address.append(ucx_blob);
  return address;
}

std::optional<ParsedWorkerAddress> ParseWorkerAddress(std::string_view address) {
  if (address.size() <= kAddressPrefix) return std::nullopt;
  uint32_t blob_length = 0;
  std::memcpy(&blob_length, address.data() + sizeof(kAddressMagic), sizeof(blob_length));
  if (std::memcmp(address.data(), kAddressMagic, sizeof(kAddressMagic)) != 0 ||
      blob_length != address.size() - kAddressPrefix) {
    return std::nullopt;
  }
  ParsedWorkerAddress parsed;
  std::memcpy(&parsed.instance, address.data() + sizeof(kAddressMagic) + sizeof(uint32_t),
              sizeof(parsed.instance));
  parsed.ucx_blob.assign(address.substr(kAddressPrefix));
  return parsed;
}

uint64_t NewInstanceId() {
  std::random_device device;
  return (uint64_t{device()} << 32) ^ device() ^
         static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
}

}  // namespace moe::transport::ucx
