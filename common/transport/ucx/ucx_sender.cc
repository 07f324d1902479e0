#include "common/transport/ucx/ucx_sender.h"

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status/status_macros.h"
#include "common/transport/ucx/ucx_status.h"
#include "common/transport/ucx/ucx_wire.h"

namespace moe::transport::ucx {

// One Send in flight: lives on the sender's stack until the request completed (Send waits for
// that unconditionally, also after aborting), so UCX's pointers to it stay valid.
struct UcxSender::SendOp {
  UcxProgressThread* progress;
  WireHeader header;
  absl::Mutex mu;
  bool done ABSL_GUARDED_BY(mu) = false;
  ucs_status_t status ABSL_GUARDED_BY(mu) = UCS_OK;

  void Finish(ucs_status_t s) {
    absl::MutexLock lock(&mu);
    done = true;
    status = s;
  }
};

absl::Status UcxSender::Send(int32_t peer, const MessageTag& tag, std::span<const std::byte> payload) {
  if (inbox_->is_shut_down()) return absl::CancelledError("transport shut down");
  RETURN_IF_ERROR(inbox_->PeerFailure(peer));
  SendOp op;
  op.progress = progress_;
  RETURN_IF_ERROR(progress_->Run([&]() -> absl::Status {
    ucp_ep_h ep = peers_->Find(peer);
    std::optional<PeerSecret> secret = peers_->SendSecret(peer);
    if (ep == nullptr || !secret.has_value()) {
      return absl::UnavailableError(absl::StrCat("peer ", peer, " is not connected"));
    }
    op.header = EncodeHeader(tag, *secret);
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
    param.cb.send = &UcxSender::OnSendDone;
    param.user_data = &op;
    // Below the threshold eager, explicitly: left to itself UCX 1.13 picks rendezvous for 32 KiB over
    // shared memory, whose handshake needs both workers progressed several times per message
    // (measured with bench/transport: docs/data-plane.md#small-message-latency).
    if (options_.rndv_threshold > 0) {
      param.flags =
          payload.size() >= options_.rndv_threshold ? UCP_AM_SEND_FLAG_RNDV : UCP_AM_SEND_FLAG_EAGER;
    }
    ucs_status_ptr_t request =
        ucp_am_send_nbx(ep, kDataAmId, &op.header, sizeof(op.header), payload.data(), payload.size(), &param);
    if (UCS_PTR_IS_ERR(request)) {
      op.Finish(UCS_PTR_STATUS(request));
    } else if (request == nullptr) {
      op.Finish(UCS_OK);
    } else {
      progress_->OpStarted();  // OnSendDone finishes `op`, frees the request, decrements
    }
    return absl::OkStatus();
  }));

  bool completed;
  {
    absl::MutexLock lock(&op.mu);
    completed = op.mu.AwaitWithTimeout(absl::Condition(&op.done), options_.send_timeout);
  }
  if (!completed) {
    // The peer neither took the message nor failed: abort the endpoint, which completes every
    // request on it with an error (UCX guarantees this for a forced close); below we wait for ours
    // so UCX no longer reads `payload` or `op` when we return.
    inbox_->MarkPeerFailed(peer, absl::UnavailableError(absl::StrCat(
                                     "peer ", peer, " did not take a ", payload.size(), "-byte message in ",
                                     absl::FormatDuration(options_.send_timeout))));
    progress_
        ->Run([&]() -> absl::Status {
          peers_->CloseIfConnected(peer);
          return absl::OkStatus();
        })
        .IgnoreError();
  }
  ucs_status_t status;
  {
    absl::MutexLock lock(&op.mu);
    op.mu.Await(absl::Condition(&op.done));
    status = op.status;
  }
  if (status == UCS_OK) return absl::OkStatus();
  absl::Status error = UcsStatusToStatus(status, absl::StrCat("sending to peer ", peer));
  if (status == UCS_ERR_CANCELED || IsUcsPeerFailure(status)) {
    if (inbox_->is_shut_down()) return absl::CancelledError("transport shut down during send");
    RETURN_IF_ERROR(inbox_->PeerFailure(peer));
    return absl::UnavailableError(error.message());
  }
  return error;
}

void UcxSender::OnSendDone(void* request, ucs_status_t status, void* user_data) {
  // Freeing before completion would suppress this callback, so the request is freed here.
  ucp_request_free(request);
  auto* op = static_cast<SendOp*>(user_data);
  op->progress->OpFinished();
  op->Finish(status);
}

}  // namespace moe::transport::ucx
