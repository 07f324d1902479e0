#include "services/router/admission.h"

#include <algorithm>
#include <utility>

namespace moe::router {

bool AdmissionQueue::Push(std::shared_ptr<PendingRequest> request) {
  if (queue_.size() >= max_size_) return false;
  queue_.push_back(std::move(request));
  return true;
}

bool AdmissionQueue::Remove(const PendingRequest* request) {
  auto it = std::find_if(queue_.begin(), queue_.end(),
                         [&](const std::shared_ptr<PendingRequest>& r) { return r.get() == request; });
  if (it == queue_.end()) return false;
  queue_.erase(it);
  return true;
}

const std::shared_ptr<PendingRequest>& AdmissionQueue::front() const {
  static const std::shared_ptr<PendingRequest> kNone;
  return queue_.empty() ? kNone : queue_.front();
}

std::shared_ptr<PendingRequest> AdmissionQueue::PopFront() {
  if (queue_.empty()) return nullptr;
  std::shared_ptr<PendingRequest> r = std::move(queue_.front());
  queue_.pop_front();
  return r;
}

std::vector<std::shared_ptr<PendingRequest>> AdmissionQueue::PopExpired(absl::Time now) {
  std::vector<std::shared_ptr<PendingRequest>> expired;
  for (auto it = queue_.begin(); it != queue_.end();) {
    if ((*it)->deadline() <= now) {
      expired.push_back(std::move(*it));
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  return expired;
}

}  // namespace moe::router
