#include "common/transport/ucx/ucx_peer_failures.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace moe::transport::ucx {

absl::Status UcxPeerFailures::Register() {
  return worker_->SetAmHandler(kGoodbyeAmId, &UcxPeerFailures::OnGoodbye, this);
}

void UcxPeerFailures::OnEndpointError(int32_t peer, ucs_status_t status) {
  inbox_->MarkPeerFailed(
      peer, absl::UnavailableError(absl::StrCat("peer ", peer, " failed: ", ucs_status_string(status))));
}

ucs_status_t UcxPeerFailures::OnGoodbye(void* arg, const void* header, size_t header_length, void* data,
                                        size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxPeerFailures*>(arg);
  const std::optional<Goodbye> goodbye = DecodeGoodbye(header, header_length);
  if (!goodbye.has_value()) {
    self->receiver_->CountMalformed();
    return UCS_OK;
  }
  const int32_t sender = goodbye->sender;
  if (self->peers_->Instance(sender) != goodbye->instance) {
    return UCS_OK;  // a goodbye from an incarnation we are no longer connected to
  }
  self->inbox_->MarkPeerFailed(sender, absl::UnavailableError(absl::StrCat("peer ", sender, " shut down")));
  // Our endpoint to it is useless now; close it after this callback (not inside progress).
  self->peers_->CloseLater(sender);
  return UCS_OK;
}

void UcxPeerFailures::SayGoodbyeAndCloseAll(absl::Duration timeout) {
  std::vector<ucs_status_ptr_t> requests;
  for (ucp_ep_h ep : peers_->Endpoints()) {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_AM_SEND_FLAG_EAGER;
    ucs_status_ptr_t request =
        ucp_am_send_nbx(ep, kGoodbyeAmId, goodbye_.data(), goodbye_.size(), nullptr, 0, &param);
    if (UCS_PTR_IS_PTR(request)) requests.push_back(request);
  }
  const absl::Time deadline = absl::Now() + timeout;
  for (ucs_status_ptr_t request : requests) {
    while (ucp_request_check_status(request) == UCS_INPROGRESS && absl::Now() < deadline) {
      ucp_worker_progress(worker_->worker());
    }
    ucp_request_free(request);
  }
  peers_->CloseAll();
}

}  // namespace moe::transport::ucx
