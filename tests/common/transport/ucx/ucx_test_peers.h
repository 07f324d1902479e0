// Test helpers: a fully connected set of UcxTransports in one process, over one UCX transport
// selection (tcp, shared memory, or the environment's UCX_TLS).
#ifndef MOE_TESTS_COMMON_TRANSPORT_UCX_UCX_TEST_PEERS_H_
#define MOE_TESTS_COMMON_TRANSPORT_UCX_UCX_TEST_PEERS_H_

#include <cstddef>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <uct/api/uct.h>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "common/status/status_macros.h"
#include "common/transport/ucx/ucx_transport.h"

namespace moe::transport::testing {

// The message size bound the test peers admit each other with (the largest test payload).
inline constexpr size_t kTestMaxMessageBytes = 16 * 1024 * 1024;

// Admits `from` at `to` (messages of at most `max_message_bytes`) and connects `from` to `to` with
// the secret, as the gRPC rendezvous does between workers.
inline absl::Status AdmitAndConnect(UcxTransport& from, UcxTransport& to,
                                    size_t max_message_bytes = kTestMaxMessageBytes) {
  ASSIGN_OR_RETURN(std::string secret, to.Admit(from.self(), max_message_bytes));
  return from.Connect(to.self(), to.WorkerAddress(), secret);
}

// Creates transports with ids 0..n-1, each admitted by and connected to every other.
inline absl::StatusOr<std::vector<std::unique_ptr<UcxTransport>>> MakeConnectedPeers(
    int n, const UcxOptions& options) {
  std::vector<std::unique_ptr<UcxTransport>> peers;
  for (int i = 0; i < n; ++i) {
    ASSIGN_OR_RETURN(auto peer, UcxTransport::Create(i, options));
    peers.push_back(std::move(peer));
  }
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) {
      if (i != j) RETURN_IF_ERROR(AdmitAndConnect(*peers[i], *peers[j]));
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

// The UCX_TLS values the parameterized tests run under, and the UCT transport names of which at
// least one must be present on the machine for the case to run (and must then show up in the
// endpoint description for the selection to count as "really used").
struct TlsCase {
  std::string tls;
  std::vector<std::string> expected_any;  // empty: no check (environment's choice); always runs
  // UcxOptions::poll_spin: the waiting threads progress UCX themselves (the fast path) for so long
  // (zero: never); unset: as long as the adaptive spin says (the default).
  std::optional<absl::Duration> poll_spin;
};

// The UCT transports UCX finds on this machine ("tcp", "posix", "rc_verbs", ...), each with the
// devices it can use ("lo", "eth0", "memory", "mlx5_0:1"), from UCX's own resource query (what
// `ucx_info -d` prints): every component's memory domains, their transport resources. Asked once
// per process; a query that fails leaves the map empty.
inline const std::map<std::string, std::set<std::string>>& AvailableUcxTransports() {
  static const auto* const available = [] {
    auto* out = new std::map<std::string, std::set<std::string>>();
    uct_component_h* components = nullptr;
    unsigned num_components = 0;
    if (uct_query_components(&components, &num_components) != UCS_OK) return out;
    for (unsigned c = 0; c < num_components; ++c) {
      uct_component_attr_t attr{};
      attr.field_mask = UCT_COMPONENT_ATTR_FIELD_MD_RESOURCE_COUNT;
      if (uct_component_query(components[c], &attr) != UCS_OK) continue;
      std::vector<uct_md_resource_desc_t> mds(attr.md_resource_count);
      attr.field_mask = UCT_COMPONENT_ATTR_FIELD_MD_RESOURCES;
      attr.md_resources = mds.data();
      if (uct_component_query(components[c], &attr) != UCS_OK) continue;
      for (const uct_md_resource_desc_t& md_resource : mds) {
        uct_md_config_t* config = nullptr;
        if (uct_md_config_read(components[c], nullptr, nullptr, &config) != UCS_OK) continue;
        uct_md_h md = nullptr;
        const ucs_status_t opened = uct_md_open(components[c], md_resource.md_name, config, &md);
        uct_config_release(config);
        if (opened != UCS_OK) continue;
        uct_tl_resource_desc_t* resources = nullptr;
        unsigned num_resources = 0;
        if (uct_md_query_tl_resources(md, &resources, &num_resources) == UCS_OK) {
          for (unsigned r = 0; r < num_resources; ++r)
            (*out)[resources[r].tl_name].insert(resources[r].dev_name);
          uct_release_tl_resource_list(resources);
        }
        uct_md_close(md);
      }
    }
    uct_release_component_list(components);
    return out;
  }();
  return *available;
}

// True if the machine has one of the case's transports (always for the environment's case).
inline bool TlsCaseAvailable(const TlsCase& c) {
  if (c.expected_any.empty()) return true;
  for (const std::string& name : c.expected_any) {
    if (AvailableUcxTransports().contains(name)) return true;
  }
  return false;
}

// "tcp/{eth0,lo} posix/{memory} ..." for messages.
inline std::string DescribeAvailableUcxTransports() {
  std::vector<std::string> parts;
  for (const auto& [tl, devices] : AvailableUcxTransports()) {
    parts.push_back(absl::StrCat(tl, "/{", absl::StrJoin(devices, ","), "}"));
  }
  return parts.empty() ? "none" : absl::StrJoin(parts, " ");
}

inline std::string TlsCaseName(const TlsCase& c) {
  if (c.tls.empty()) return "Env";
  std::string name;
  for (char ch : c.tls) name += (ch == ',' ? '_' : ch);
  if (c.poll_spin.has_value()) name += *c.poll_spin > absl::ZeroDuration() ? "_spin" : "_nospin";
  return name;
}

}  // namespace moe::transport::testing

#endif  // MOE_TESTS_COMMON_TRANSPORT_UCX_UCX_TEST_PEERS_H_
