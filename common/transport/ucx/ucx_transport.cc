#include "common/transport/ucx/ucx_transport.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "common/transport/ucx/ucx_am_receiver.h"
#include "common/transport/ucx/ucx_peer_failures.h"
#include "common/transport/ucx/ucx_peer_table.h"
#include "common/transport/ucx/ucx_progress_thread.h"
#include "common/transport/ucx/ucx_sender.h"
#include "common/transport/ucx/ucx_wire.h"
#include "common/transport/ucx/ucx_worker.h"

namespace moe::transport {

static_assert(kDataPlaneSecretBytes == ucx::kPeerSecretBytes);

absl::StatusOr<std::unique_ptr<UcxTransport>> UcxTransport::Create(int32_t self, const UcxOptions& options) {
  if (self < 0) return absl::InvalidArgumentError(absl::StrCat("peer id ", self, " is negative"));
  if (options.send_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("UcxOptions.send_timeout must be positive");
  }
  if (options.poll_spin.has_value() &&
      (*options.poll_spin < absl::ZeroDuration() || *options.poll_spin > UcxOptions::kMaxPollSpin)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "UcxOptions.poll_spin ", absl::FormatDuration(*options.poll_spin), " must be between 0 and ",
        absl::FormatDuration(UcxOptions::kMaxPollSpin), " (or unset: adaptive)"));
  }
  std::unique_ptr<UcxTransport> transport(new UcxTransport(self, options));
  RETURN_IF_ERROR(transport->Init());
  return transport;
}

UcxTransport::UcxTransport(int32_t self, const UcxOptions& options)
    : InboxTransport(self, options.inbox), options_(options) {}

absl::Status UcxTransport::Init() {
  ASSIGN_OR_RETURN(worker_, ucx::UcxWorker::Create(options_));
  instance_ = ucx::NewInstanceId();
  address_ = ucx::FrameWorkerAddress(worker_->address_blob(), instance_);
  receiver_ = std::make_unique<ucx::UcxAmReceiver>(worker_.get(), &inbox());
  failures_ =
      std::make_unique<ucx::UcxPeerFailures>(self(), instance_, worker_.get(), &inbox(), receiver_.get());
  peers_ = std::make_unique<ucx::UcxPeerTable>(
      worker_->worker(), [failures = failures_.get()](int32_t peer, ucs_status_t status) {
        failures->OnEndpointError(peer, status);
      });
  failures_->set_peers(peers_.get());
  RETURN_IF_ERROR(receiver_->Register());
  RETURN_IF_ERROR(failures_->Register());
  ASSIGN_OR_RETURN(progress_,
                   ucx::UcxProgressThread::Create(worker_->worker(), options_.busy_poll,
                                                  [peers = peers_.get()] { return peers->CloseQueued(); }));
  receiver_->set_progress(progress_.get());
  // A waiting receiver progresses UCX itself for a moment (the fast path; ucx_progress_thread.h):
  // as long as its recent waits suggest (adaptive), or a fixed spin.
  if (options_.poll_spin.has_value()) {
    inbox().SetPoller(progress_.get(), *options_.poll_spin, options_.receiver_progress);
  } else {
    inbox().SetAdaptivePoller(progress_.get(), AdaptiveSpinConfig{}, options_.receiver_progress);
  }
  sender_ = std::make_unique<ucx::UcxSender>(options_, &inbox(), peers_.get(), progress_.get());
  progress_->Start();  // last: from here on UCX callbacks may run
  return absl::OkStatus();
}

UcxTransport::~UcxTransport() {
  if (progress_ != nullptr) {
    Shutdown();
    // Commands posted from now on are refused; the endpoints were closed by Shutdown.
    progress_->Stop();
  }
  // Before the pieces: UCX may still complete (cancel) requests whose callbacks reach them.
  worker_.reset();
}

absl::StatusOr<std::string> UcxTransport::Admit(int32_t peer, size_t max_message_bytes) {
  if (peer < 0) return absl::InvalidArgumentError(absl::StrCat("peer id ", peer, " is negative"));
  if (inbox().is_shut_down()) return absl::CancelledError("transport shut down");
  const ucx::PeerSecret secret = ucx::NewPeerSecret();
  // The old admission's queued messages and step window go first, then the new secret applies.
  inbox().ResetSender(peer);
  receiver_->Admit(peer, secret, max_message_bytes);
  return std::string(reinterpret_cast<const char*>(secret.data()), secret.size());
}

void UcxTransport::Revoke(int32_t peer) {
  receiver_->Revoke(peer);
  inbox().ResetSender(peer);
}

absl::Status UcxTransport::Connect(int32_t peer, std::string_view address, std::string_view secret) {
  if (peer < 0) return absl::InvalidArgumentError(absl::StrCat("peer id ", peer, " is negative"));
  if (secret.size() != ucx::kPeerSecretBytes) {
    return absl::InvalidArgumentError(absl::StrCat("secret: ", secret.size(), " bytes for peer ", peer,
                                                   ", expected ", ucx::kPeerSecretBytes));
  }
  const uint8_t own_header = static_cast<uint8_t>(worker_->address_blob().front());
  absl::StatusOr<ucx::ParsedWorkerAddress> parsed = ucx::ParseWorkerAddress(address, own_header);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(parsed.status().message(), " (peer ", peer, ")"));
  }
  ucx::PeerSecret send_secret;
  std::memcpy(send_secret.data(), secret.data(), send_secret.size());
  if (inbox().is_shut_down()) return absl::CancelledError("transport shut down");
  RETURN_IF_ERROR(progress_->Run([&]() -> absl::Status {
    return peers_->Connect(peer, parsed->ucx_blob, parsed->instance, send_secret);
  }));
  inbox().ClearPeerFailure(peer);
  return absl::OkStatus();
}

absl::Status UcxTransport::Disconnect(int32_t peer) {
  return progress_->Run([&]() -> absl::Status { return peers_->Disconnect(peer); });
}

absl::StatusOr<std::string> UcxTransport::DescribeEndpoint(int32_t peer) {
  absl::StatusOr<std::string> description;
  RETURN_IF_ERROR(progress_->Run([&]() -> absl::Status {
    description = peers_->Describe(peer);
    return description.status();
  }));
  return description;
}

absl::Status UcxTransport::Send(int32_t peer, const MessageTag& tag, std::span<const std::byte> payload) {
  RETURN_IF_ERROR(CheckSender(tag));
  return sender_->Send(peer, tag, payload);
}

void UcxTransport::Shutdown() {
  if (!inbox().Shutdown()) return;
  progress_->Wake();  // receivers asleep on the worker's fd (receiver_progress) see it at once
  progress_
      ->Run([this]() -> absl::Status {
        failures_->SayGoodbyeAndCloseAll(options_.goodbye_timeout);
        return absl::OkStatus();
      })
      .IgnoreError();
}

uint64_t UcxTransport::malformed_messages() const {
  return receiver_->malformed_messages();
}

}  // namespace moe::transport
