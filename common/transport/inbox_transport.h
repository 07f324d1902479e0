// The part of an ActivationTransport that every implementation shares: its peer id and its receive
// side, a TaggedInbox (tagged_inbox.h). A transport derives from InboxTransport, delivers what its
// network code receives into inbox(), and implements only Send and Shutdown (which must shut the
// inbox down). Receiving, matching and the drop count then behave the same in every transport.
//
// Thread safety: as TaggedInbox; all methods are thread-safe.
#ifndef MOE_COMMON_TRANSPORT_INBOX_TRANSPORT_H_
#define MOE_COMMON_TRANSPORT_INBOX_TRANSPORT_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/transport/activation_transport.h"
#include "common/transport/tagged_inbox.h"

namespace moe::transport {

class InboxTransport : public ActivationTransport {
 public:
  int32_t self() const final { return self_; }
  absl::StatusOr<Message> ReceiveAny(absl::Time deadline) final { return inbox_.ReceiveAny(deadline); }
  absl::StatusOr<Message> ReceiveTagged(const MessageTag& tag, absl::Time deadline) final {
    return inbox_.ReceiveTagged(tag, deadline);
  }
  uint64_t dropped_messages() const final { return inbox_.dropped_messages(); }
  DropCounts drop_counts() const final { return inbox_.drop_counts(); }
  // Messages queued now from `sender` (waiting to be received).
  size_t queued_messages(int32_t sender) const { return inbox_.queued_messages(sender); }
  // The receivers' waits so far, and how many spun and caught their message (tagged_inbox.h).
  SpinCounts spin_counts() const { return inbox_.spin_counts(); }

 protected:
  InboxTransport(int32_t self, InboxLimits limits) : self_(self), inbox_(limits) {}

  TaggedInbox& inbox() { return inbox_; }
  // For Send: INVALID_ARGUMENT unless tag.sender is self() (a transport never sends as another).
  absl::Status CheckSender(const MessageTag& tag) const {
    if (tag.sender == self_) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("tag.sender ", tag.sender, " != self ", self_));
  }

 private:
  const int32_t self_;
  TaggedInbox inbox_;
};

}  // namespace moe::transport

#endif  // MOE_COMMON_TRANSPORT_INBOX_TRANSPORT_H_
