#include "common/transport/ucx/ucx_peer_table.h"

#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status/status_macros.h"
#include "common/transport/ucx/ucx_status.h"

namespace moe::transport::ucx {
namespace {

// Bound on waiting for a forced endpoint close to finish.
constexpr absl::Duration kCloseTimeout = absl::Seconds(2);

}  // namespace

absl::Status UcxPeerTable::Connect(int32_t peer, const std::string& ucx_blob, uint64_t instance,
                                   const PeerSecret& secret) {
  CloseIfConnected(peer);
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.address = reinterpret_cast<const ucp_address_t*>(ucx_blob.data());
  params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  params.err_handler.cb = &UcxPeerTable::OnEndpointError;
  params.err_handler.arg = this;
  ucp_ep_h ep = nullptr;
  RETURN_IF_ERROR(
      UcsStatusToStatus(ucp_ep_create(worker_, &params, &ep), absl::StrCat("connecting to peer ", peer)));
  endpoints_[peer] = ep;
  instances_[peer] = instance;
  secrets_[peer] = secret;
  return absl::OkStatus();
}

absl::Status UcxPeerTable::Disconnect(int32_t peer) {
  if (!endpoints_.contains(peer))
    return absl::NotFoundError(absl::StrCat("peer ", peer, " is not connected"));
  CloseIfConnected(peer);
  return absl::OkStatus();
}

void UcxPeerTable::CloseIfConnected(int32_t peer) {
  auto it = endpoints_.find(peer);
  if (it == endpoints_.end()) return;
  ucp_ep_h ep = it->second;
  endpoints_.erase(it);
  CloseEndpointNow(ep);
}

ucp_ep_h UcxPeerTable::Find(int32_t peer) const {
  auto it = endpoints_.find(peer);
  return it == endpoints_.end() ? nullptr : it->second;
}

std::optional<PeerSecret> UcxPeerTable::SendSecret(int32_t peer) const {
  if (!endpoints_.contains(peer)) return std::nullopt;
  auto it = secrets_.find(peer);
  if (it == secrets_.end()) return std::nullopt;
  return it->second;
}

std::optional<uint64_t> UcxPeerTable::Instance(int32_t peer) const {
  auto it = instances_.find(peer);
  if (it == instances_.end()) return std::nullopt;
  return it->second;
}

absl::StatusOr<std::string> UcxPeerTable::Describe(int32_t peer) const {
  ucp_ep_h ep = Find(peer);
  if (ep == nullptr) return absl::NotFoundError(absl::StrCat("peer ", peer, " is not connected"));
  char* buffer = nullptr;
  size_t size = 0;
  FILE* stream = open_memstream(&buffer, &size);
  if (stream == nullptr) return absl::InternalError("open_memstream failed");
  ucp_ep_print_info(ep, stream);
  std::fclose(stream);
  std::string description(buffer, size);
  std::free(buffer);
  return description;
}

std::vector<ucp_ep_h> UcxPeerTable::Endpoints() const {
  std::vector<ucp_ep_h> out;
  out.reserve(endpoints_.size());
  for (const auto& [peer, ep] : endpoints_) out.push_back(ep);
  return out;
}

void UcxPeerTable::CloseLater(int32_t peer) {
  if (ucp_ep_h ep = Find(peer); ep != nullptr) to_close_.push_back(ep);
}

bool UcxPeerTable::CloseQueued() {
  if (to_close_.empty()) return false;
  std::vector<ucp_ep_h> to_close;
  to_close.swap(to_close_);
  for (ucp_ep_h ep : to_close) {
    for (auto it = endpoints_.begin(); it != endpoints_.end(); ++it) {
      if (it->second == ep) {
        endpoints_.erase(it);
        CloseEndpointNow(ep);
        break;
      }
    }
  }
  return true;
}

void UcxPeerTable::CloseAll() {
  for (const auto& [peer, ep] : endpoints_) CloseEndpointNow(ep);
  endpoints_.clear();
  to_close_.clear();
}

void UcxPeerTable::OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status) {
  auto* self = static_cast<UcxPeerTable*>(arg);
  for (const auto& [peer, endpoint] : self->endpoints_) {
    if (endpoint != ep) continue;
    self->on_peer_error_(peer, status);
    break;
  }
  self->to_close_.push_back(ep);
}

void UcxPeerTable::CloseEndpointNow(ucp_ep_h ep) {
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_EP_CLOSE_FLAG_FORCE;
  ucs_status_ptr_t request = ucp_ep_close_nbx(ep, &param);
  if (!UCS_PTR_IS_PTR(request)) return;
  const absl::Time deadline = absl::Now() + kCloseTimeout;
  while (ucp_request_check_status(request) == UCS_INPROGRESS && absl::Now() < deadline) {
    ucp_worker_progress(worker_);
  }
  ucp_request_free(request);  // releases it now or when it completes
}

}  // namespace moe::transport::ucx
