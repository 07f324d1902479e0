#include "common/transport/tagged_inbox.h"

#include <algorithm>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace moe::transport {
namespace {

// A message the receiver no longer waits for: same sender and kind, older step.
bool IsStaleFor(const MessageTag& queued, const MessageTag& wanted) {
  return queued.sender == wanted.sender && queued.kind == wanted.kind && queued.step < wanted.step;
}

}  // namespace

TaggedInbox::SenderQueue* TaggedInbox::Sender(int32_t sender) {
  return &senders_[sender];
}

std::optional<DropReason> TaggedInbox::ScreenLocked(const MessageTag& tag, size_t pending) const {
  auto it = senders_.find(tag.sender);
  if (it == senders_.end()) return std::nullopt;
  const SenderQueue& queue = it->second;
  if (queue.floor.has_value() && limits_.max_steps_ahead != UINT64_MAX) {
    const uint64_t floor = *queue.floor;
    if (tag.step < floor) return DropReason::kStepWindow;
    if (tag.step - floor > limits_.max_steps_ahead) return DropReason::kStepWindow;
  }
  if (limits_.max_queued_per_sender > 0 && queue.messages.size() + pending >= limits_.max_queued_per_sender) {
    return DropReason::kQueueFull;
  }
  return std::nullopt;
}

std::optional<DropReason> TaggedInbox::Screen(const MessageTag& tag, size_t pending) const {
  absl::MutexLock lock(&mu_);
  return ScreenLocked(tag, pending);
}

void TaggedInbox::SetPoller(InboxPoller* poller, absl::Duration spin, bool drive) {
  absl::MutexLock lock(&mu_);
  poller_ = poller;
  spin_ = spin;
  drive_ = drive;
  adaptive_.reset();
}

void TaggedInbox::SetAdaptivePoller(InboxPoller* poller, const AdaptiveSpinConfig& config, bool drive) {
  absl::MutexLock lock(&mu_);
  poller_ = poller;
  spin_ = absl::ZeroDuration();
  drive_ = drive;
  adaptive_.emplace(config);
}

template <typename Ready>
bool TaggedInbox::WaitLocked(Ready ready, absl::Time deadline) {
  if (ready()) return true;
  const absl::Time start = absl::Now();
  if (start >= deadline) return false;  // a look, not a wait: nothing to spin for or learn from
  absl::Duration spin = absl::ZeroDuration();
  if (poller_ != nullptr) spin = adaptive_.has_value() ? adaptive_->NextSpin() : spin_;
  bool caught = false;
  if (poller_ != nullptr && (spin > absl::ZeroDuration() || drive_)) {
    const absl::Time end = std::min(start + spin, deadline);
    mu_.Unlock();
    poller_->BeginSpin();
    mu_.Lock();
    while (!ready() && absl::Now() < end) {
      mu_.Unlock();
      poller_->Poll();
      mu_.Lock();
    }
    caught = spin > absl::ZeroDuration() && ready();
    // Driving: sleep on the network's events and take what they bring on this thread.
    while (drive_ && !ready()) {
      const absl::Time now = absl::Now();
      if (now >= deadline) break;
      mu_.Unlock();
      poller_->WaitForActivity(std::min(deadline, now + kDriveSlice));
      poller_->Poll();
      mu_.Lock();
    }
    mu_.Unlock();
    poller_->EndSpin();
    mu_.Lock();
  }
  const bool done = mu_.AwaitWithDeadline(absl::Condition(&ready), deadline);
  if (shutdown_) return done;  // not a wait for a message: nothing to learn from it
  ++spin_counts_.waits;
  if (spin > absl::ZeroDuration()) ++spin_counts_.spins;
  if (caught) ++spin_counts_.caught;
  if (adaptive_.has_value()) adaptive_->Record(spin, absl::Now() - start, caught);
  return done;
}

void TaggedInbox::CountDrop(DropReason reason) {
  absl::MutexLock lock(&mu_);
  ++drops_[static_cast<int>(reason)];
}

void TaggedInbox::RaiseFloor(SenderQueue* queue, uint64_t step) {
  queue->floor = queue->floor.has_value() ? std::max(*queue->floor, step) : step;
}

bool TaggedInbox::Deliver(Message message) {
  absl::MutexLock lock(&mu_);
  if (shutdown_) return false;
  if (std::optional<DropReason> drop = ScreenLocked(message.tag, 0); drop.has_value()) {
    ++drops_[static_cast<int>(*drop)];
    return false;
  }
  SenderQueue* queue = Sender(message.tag.sender);
  queue->messages.push_back(QueuedMessage{clock_++, std::move(message)});
  ++queue->delivered;
  ++queued_;
  return true;
}

void TaggedInbox::ResetSender(int32_t peer) {
  absl::MutexLock lock(&mu_);
  auto it = senders_.find(peer);
  if (it == senders_.end()) return;
  queued_ -= it->second.messages.size();
  it->second.messages.clear();
  it->second.floor.reset();
}

absl::StatusOr<Message> TaggedInbox::ReceiveAny(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return shutdown_ || queued_ > 0; };
  WaitLocked(ready, deadline);
  if (shutdown_) return absl::CancelledError("transport shut down");
  if (queued_ == 0) return absl::UnavailableError("no message from any peer before the deadline");
  // The message whose turn comes first: its arrival, or its sender's previous turn if later. A
  // sender with a backlog thus gets one message out per turn of each other waiting sender, and
  // without backlogs this is arrival order. There are few senders.
  SenderQueue* next = nullptr;
  uint64_t next_turn = 0;
  for (auto& [sender, queue] : senders_) {
    if (queue.messages.empty()) continue;
    const uint64_t turn = std::max(queue.messages.front().arrival, queue.last_turn);
    if (next == nullptr || turn < next_turn ||
        (turn == next_turn && queue.messages.front().arrival < next->messages.front().arrival)) {
      next = &queue;
      next_turn = turn;
    }
  }
  Message message = std::move(next->messages.front().message);
  next->messages.pop_front();
  next->last_turn = clock_++;
  RaiseFloor(next, message.tag.step);
  --queued_;
  return message;
}

absl::StatusOr<Message> TaggedInbox::ReceiveTagged(const MessageTag& tag, absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  SenderQueue* queue = Sender(tag.sender);
  RaiseFloor(queue, tag.step);
  for (;;) {
    if (shutdown_) return absl::CancelledError("transport shut down");
    for (auto it = queue->messages.begin(); it != queue->messages.end();) {
      if (it->message.tag == tag) {
        Message message = std::move(it->message);
        queue->messages.erase(it);
        --queued_;
        return message;
      }
      if (IsStaleFor(it->message.tag, tag)) {
        ++drops_[static_cast<int>(DropReason::kStepWindow)];  // a late answer of an abandoned round
        --queued_;
        it = queue->messages.erase(it);
        continue;
      }
      ++it;
    }
    if (!queue->failure.ok()) {
      return absl::UnavailableError(
          absl::StrCat("waiting for ", tag.DebugString(), ": ", queue->failure.message()));
    }
    const uint64_t seen = queue->delivered;
    auto changed = [this, queue, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return shutdown_ || queue->delivered != seen || !queue->failure.ok();
    };
    if (!WaitLocked(changed, deadline)) {
      return absl::UnavailableError(
          absl::StrCat("peer ", tag.sender, " did not answer ", tag.DebugString(), " in time"));
    }
  }
}

void TaggedInbox::MarkPeerFailed(int32_t peer, absl::Status why) {
  absl::MutexLock lock(&mu_);
  SenderQueue* queue = Sender(peer);
  if (queue->failure.ok()) {
    queue->failure =
        why.ok() ? absl::UnavailableError(absl::StrCat("peer ", peer, " failed")) : std::move(why);
  }
}

void TaggedInbox::ClearPeerFailure(int32_t peer) {
  absl::MutexLock lock(&mu_);
  if (auto it = senders_.find(peer); it != senders_.end()) it->second.failure = absl::OkStatus();
}

absl::Status TaggedInbox::PeerFailure(int32_t peer) const {
  absl::MutexLock lock(&mu_);
  auto it = senders_.find(peer);
  return it == senders_.end() ? absl::OkStatus() : it->second.failure;
}

bool TaggedInbox::Shutdown() {
  absl::MutexLock lock(&mu_);
  if (shutdown_) return false;
  shutdown_ = true;
  for (auto& [sender, queue] : senders_) queue.messages.clear();
  queued_ = 0;
  return true;
}

bool TaggedInbox::is_shut_down() const {
  absl::MutexLock lock(&mu_);
  return shutdown_;
}

uint64_t TaggedInbox::dropped_messages() const {
  absl::MutexLock lock(&mu_);
  return std::accumulate(drops_.begin(), drops_.end(), uint64_t{0});
}

DropCounts TaggedInbox::drop_counts() const {
  absl::MutexLock lock(&mu_);
  return drops_;
}

size_t TaggedInbox::queued_messages() const {
  absl::MutexLock lock(&mu_);
  return queued_;
}

SpinCounts TaggedInbox::spin_counts() const {
  absl::MutexLock lock(&mu_);
  return spin_counts_;
}

size_t TaggedInbox::queued_messages(int32_t sender) const {
  absl::MutexLock lock(&mu_);
  auto it = senders_.find(sender);
  return it == senders_.end() ? 0 : it->second.messages.size();
}

}  // namespace moe::transport
