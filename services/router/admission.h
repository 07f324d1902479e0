// Admission: the bounded FIFO of requests waiting for placement.
#ifndef MOE_SERVICES_ROUTER_ADMISSION_H_
#define MOE_SERVICES_ROUTER_ADMISSION_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "absl/time/time.h"

namespace moe::router {

// A request as the attention worker pool sees it. Implemented by the Generate call.
class PendingRequest {
 public:
  virtual ~PendingRequest() = default;
  // Prompt + max_new_tokens: the KV capacity the request may need.
  virtual int64_t max_tokens() const = 0;
  virtual absl::Time deadline() const = 0;
  // Placed on attention worker `worker` (called once, without the pool's lock held). Returns false
  // if the request was cancelled meanwhile; the pool then drops the placement.
  virtual bool OnPlaced(size_t worker) = 0;
  // Its deadline passed while it waited (called once, instead of OnPlaced).
  virtual void OnExpired() = 0;
};

// Not thread-safe (the attention worker pool locks around it).
class AdmissionQueue {
 public:
  explicit AdmissionQueue(size_t max_size) : max_size_(max_size) {}

  // False when the queue already holds max_size requests.
  bool Push(std::shared_ptr<PendingRequest> request);
  // Removes `request`; false if it is not queued (already placed or expired).
  bool Remove(const PendingRequest* request);
  // The oldest request (nullptr when empty).
  const std::shared_ptr<PendingRequest>& front() const;
  std::shared_ptr<PendingRequest> PopFront();
  // Removes and returns every request whose deadline is at or before `now`, oldest first.
  std::vector<std::shared_ptr<PendingRequest>> PopExpired(absl::Time now);

  size_t size() const { return queue_.size(); }
  bool empty() const { return queue_.empty(); }
  size_t max_size() const { return max_size_; }

 private:
  const size_t max_size_;
  std::deque<std::shared_ptr<PendingRequest>> queue_;
};

}  // namespace moe::router

#endif  // MOE_SERVICES_ROUTER_ADMISSION_H_
