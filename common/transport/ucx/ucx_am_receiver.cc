#include "common/transport/ucx/ucx_am_receiver.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/transport/ucx/ucx_wire.h"

namespace moe::transport::ucx {

absl::Status UcxAmReceiver::Register() {
  return worker_->SetAmHandler(kDataAmId, &UcxAmReceiver::OnData, this);
}

void UcxAmReceiver::Admit(int32_t peer, const PeerSecret& secret, size_t max_message_bytes) {
  absl::MutexLock lock(&mu_);
  Admission& admission = admitted_[peer];
  admission.secret = secret;
  admission.max_message_bytes = max_message_bytes;
}

void UcxAmReceiver::Revoke(int32_t peer) {
  absl::MutexLock lock(&mu_);
  if (auto it = admitted_.find(peer); it != admitted_.end() && it->second.rndv_in_flight == 0) {
    admitted_.erase(it);
  } else if (it != admitted_.end()) {
    // Receives in flight still decrement their count; a secret nobody has keeps the peer out.
    it->second.secret = NewPeerSecret();
  }
}

std::optional<DropReason> UcxAmReceiver::AdmitMessage(const MessageTag& tag, const PeerSecret& secret,
                                                      size_t length, bool rndv) {
  absl::MutexLock lock(&mu_);
  auto it = admitted_.find(tag.sender);
  if (it == admitted_.end()) return DropReason::kUnknownSender;
  Admission& admission = it->second;
  if (!SecretsEqual(admission.secret, secret)) return DropReason::kBadSecret;
  if (length > admission.max_message_bytes) return DropReason::kTooLarge;
  if (std::optional<DropReason> drop = inbox_->Screen(tag, admission.rndv_in_flight); drop.has_value()) {
    return drop;
  }
  if (rndv) ++admission.rndv_in_flight;
  return std::nullopt;
}

ucs_status_t UcxAmReceiver::OnData(void* arg, const void* header, size_t header_length, void* data,
                                   size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxAmReceiver*>(arg);
  Message message;
  PeerSecret secret;
  if (!DecodeHeader(header, header_length, &message.tag, &secret)) {
    self->CountMalformed();
    return UCS_OK;  // drops it (a rendezvous sender completes normally)
  }
  if (self->inbox_->is_shut_down()) return UCS_OK;
  const bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  if (std::optional<DropReason> drop = self->AdmitMessage(message.tag, secret, length, rndv);
      drop.has_value()) {
    // Dropped before its payload is copied or pulled: returning UCS_OK without receiving the data
    // releases it (for rendezvous, UCX completes the sender's request without a transfer).
    self->inbox_->CountDrop(*drop);
    return UCS_OK;
  }
  if (!rndv) {
    const auto* bytes = static_cast<const std::byte*>(data);
    message.payload.assign(bytes, bytes + length);
    self->inbox_->Deliver(std::move(message));
    return UCS_OK;
  }
  // Rendezvous: pull the data straight into the message buffer.
  auto receive = std::make_unique<RndvReceive>();
  receive->receiver = self;
  receive->message = std::move(message);
  receive->message.payload.resize(length);
  RndvReceive* raw = receive.get();
  {
    absl::MutexLock lock(&self->mu_);
    self->rndv_in_flight_.emplace(raw, std::move(receive));
  }
  ucp_request_param_t recv_param{};
  recv_param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  recv_param.cb.recv_am = &UcxAmReceiver::OnRndvDone;
  recv_param.user_data = raw;
  ucs_status_ptr_t request =
      ucp_am_recv_data_nbx(self->worker_->worker(), data, raw->message.payload.data(), length, &recv_param);
  // A request completes through OnRndvDone (which frees it); otherwise it finished already.
  if (UCS_PTR_IS_PTR(request)) {
    self->progress_->OpStarted();
  } else {
    OnRndvDone(nullptr, UCS_PTR_STATUS(request), length, raw);
  }
  return UCS_INPROGRESS;  // UCX owns `data` now (ucp_am_recv_data_nbx took it)
}

void UcxAmReceiver::OnRndvDone(void* request, ucs_status_t status, size_t length, void* user_data) {
  auto* raw = static_cast<RndvReceive*>(user_data);
  UcxAmReceiver* self = raw->receiver;
  if (request != nullptr) {
    ucp_request_free(request);
    self->progress_->OpFinished();
  }
  std::unique_ptr<RndvReceive> receive;
  {
    absl::MutexLock lock(&self->mu_);
    auto node = self->rndv_in_flight_.extract(raw);
    if (node.empty()) return;
    receive = std::move(node.mapped());
    if (auto it = self->admitted_.find(receive->message.tag.sender);
        it != self->admitted_.end() && it->second.rndv_in_flight > 0) {
      --it->second.rndv_in_flight;
    }
  }
  const int32_t sender = receive->message.tag.sender;
  if (status != UCS_OK) {
    // The sender died (or we are closing) mid-transfer: the partial message is dropped.
    self->inbox_->MarkPeerFailed(
        sender, absl::UnavailableError(
                    absl::StrCat("receiving from peer ", sender, ": ", ucs_status_string(status))));
    return;
  }
  self->inbox_->Deliver(std::move(receive->message));
}

}  // namespace moe::transport::ucx
