// Test helpers: a fully connected set of UcxTransports in one process, over one UCX transport
// selection (tcp, shared memory, or the environment's UCX_TLS).
#ifndef MOE_TESTS_COMMON_TRANSPORT_UCX_UCX_TEST_PEERS_H_
#define MOE_TESTS_COMMON_TRANSPORT_UCX_UCX_TEST_PEERS_H_

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "common/transport/ucx/ucx_transport.h"

namespace moe::transport::testing {

// Creates transports with ids 0..n-1, each connected to every other.
inline absl::StatusOr<std::vector<std::unique_ptr<UcxTransport>>> MakeConnectedPeers(
    int n, const UcxOptions& options) {
  std::vector<std::unique_ptr<UcxTransport>> peers;
  for (int i = 0; i < n; ++i) {
    ASSIGN_OR_RETURN(auto peer, UcxTransport::Create(i, options));
    peers.push_back(std::move(peer));
  }
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) {
      if (i != j) RETURN_IF_ERROR(peers[i]->Connect(j, peers[j]->WorkerAddress()));
    }
  }
  return peers;
}

// A payload whose every byte depends on (seed, position), so a misplaced or mixed-up byte shows.
inline std::vector<std::byte> Pattern(size_t size, uint32_t seed) {
  std::vector<std::byte> out(size);
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < size; ++i) {
    x = x * 1664525u + 1013904223u;
    out[i] = static_cast<std::byte>(x >> 24);
  }
  return out;
}

// The UCX_TLS values the parameterized tests run under, and the transport names that must show
// up in the endpoint description for the selection to count as "really used".
struct TlsCase {
  std::string tls;
  std::vector<std::string> expected_any;  // empty: no check (environment's choice)
};

inline std::string TlsCaseName(const TlsCase& c) {
  if (c.tls.empty()) return "Env";
  std::string name;
  for (char ch : c.tls) name += (ch == ',' ? '_' : ch);
  return name;
}

}  // namespace moe::transport::testing

#endif  // MOE_TESTS_COMMON_TRANSPORT_UCX_UCX_TEST_PEERS_H_
