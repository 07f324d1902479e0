// A UcxTransport's endpoints: one ucp_ep per connected peer, created from the peer's address
// with UCP_ERR_HANDLING_MODE_PEER, which incarnation of the peer it leads to, and the secret the
// peer gave us to carry in every message to it. UCX reports a
// failed endpoint through a callback inside ucp_worker_progress, where closing it is not allowed;
// such endpoints are queued (CloseLater) and closed by CloseQueued after progress returns.
//
// Thread safety: none; the progress thread only (it is the only thread calling UCX).
#ifndef MOE_COMMON_TRANSPORT_UCX_UCX_PEER_TABLE_H_
#define MOE_COMMON_TRANSPORT_UCX_UCX_PEER_TABLE_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <ucp/api/ucp.h>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/transport/ucx/ucx_wire.h"

namespace moe::transport::ucx {

class UcxPeerTable {
 public:
  // `on_peer_error(peer, status)` is called (inside progress) when UCX fails the endpoint to a
  // connected peer; the endpoint is then closed after the callback.
  UcxPeerTable(ucp_worker_h worker, std::function<void(int32_t, ucs_status_t)> on_peer_error)
      : worker_(worker), on_peer_error_(std::move(on_peer_error)) {}

  UcxPeerTable(const UcxPeerTable&) = delete;
  UcxPeerTable& operator=(const UcxPeerTable&) = delete;

  // Creates the endpoint to `peer` (incarnation `instance`, which admitted us with `secret`) from
  // UCX's address blob, replacing (closing) an existing one. The UCX error if ucp_ep_create fails.
  absl::Status Connect(int32_t peer, const std::string& ucx_blob, uint64_t instance,
                       const PeerSecret& secret);
  // Closes the endpoint to `peer` now. NOT_FOUND if `peer` is not connected.
  absl::Status Disconnect(int32_t peer);
  // Closes the endpoint to `peer` now if there is one.
  void CloseIfConnected(int32_t peer);

  // The endpoint to `peer`; nullptr if not connected.
  ucp_ep_h Find(int32_t peer) const;
  // The secret to carry in messages to `peer`; nullopt if not connected.
  std::optional<PeerSecret> SendSecret(int32_t peer) const;
  // The incarnation `peer` had when connected; nullopt if not connected.
  std::optional<uint64_t> Instance(int32_t peer) const;
  // ucp_ep_print_info of the endpoint to `peer`. NOT_FOUND if not connected.
  absl::StatusOr<std::string> Describe(int32_t peer) const;
  // Every connected endpoint.
  std::vector<ucp_ep_h> Endpoints() const;

  // From inside a UCX callback: close the endpoint to `peer` after progress returns.
  void CloseLater(int32_t peer);
  // Closes the endpoints queued by CloseLater (if still in the table); true if any were queued.
  bool CloseQueued();
  // Closes every endpoint and forgets the queued ones.
  void CloseAll();

 private:
  static void OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status);
  // Forced close, waiting (bounded) for UCX to finish it.
  void CloseEndpointNow(ucp_ep_h ep);

  const ucp_worker_h worker_;
  const std::function<void(int32_t, ucs_status_t)> on_peer_error_;
  absl::flat_hash_map<int32_t, ucp_ep_h> endpoints_;
  absl::flat_hash_map<int32_t, uint64_t> instances_;
  absl::flat_hash_map<int32_t, PeerSecret> secrets_;
  std::vector<ucp_ep_h> to_close_;  // failed inside a callback, closed after it
};

}  // namespace moe::transport::ucx

#endif  // MOE_COMMON_TRANSPORT_UCX_UCX_PEER_TABLE_H_
