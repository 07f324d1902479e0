// The router's pool of attention workers: admission (bounded FIFO), load polling of the attention
// workers (and health checks of the expert workers), placement on the worker with the most free KV
// blocks, readiness and the membership metrics.
//
// One pool thread does all placement and calls PendingRequest::OnPlaced/OnExpired and the
// readiness callback; load answers arrive on gRPC threads and only update the views.
//
// Membership is elastic (SetAttentionWorkers, fed by WorkerDiscovery): a worker index is never
// reused or invalidated, so calls holding one stay valid. A removed worker is no longer polled or
// placed on (its open streams carry on; when it stops, SIGTERM hands them back and the router
// migrates them as for any failed worker); a new or returning one gets requests once a load poll
// says it is ready.
//
// Thread-safe.
#ifndef MOE_SERVICES_ROUTER_ATTENTION_WORKER_POOL_H_
#define MOE_SERVICES_ROUTER_ATTENTION_WORKER_POOL_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/rpc/tls.h"
#include "services/router/admission.h"
#include "services/router/attention_client.h"
#include "services/router/health_client.h"
#include "services/router/placement.h"
#include "services/router/router_metrics.h"

namespace moe::router {

struct AttentionWorkerPoolOptions {
  size_t max_queued_requests = 256;
  absl::Duration poll_interval = absl::Milliseconds(100);
  absl::Duration load_timeout = absl::Seconds(1);
  // How the pool dials the workers (default: plaintext).
  rpc::ClientCredentials credentials;
};

class AttentionWorkerPool {
 public:
  // `metrics` must outlive the pool.
  AttentionWorkerPool(std::vector<std::string> attention_workers, std::vector<std::string> expert_workers,
                      AttentionWorkerPoolOptions options, RouterMetrics* metrics);
  ~AttentionWorkerPool();

  // Starts the pool thread. `on_ready_change(ready)` is called from it whenever readiness
  // (at least one attention worker ready) changes, including the first poll's result.
  void Start(std::function<void(bool ready)> on_ready_change);
  // Stops the thread; requests still queued get OnExpired.
  void Stop();

  // Queues `request` for placement (OnPlaced later, on the pool thread). Errors (the request
  // is not queued): UNAVAILABLE "no_workers" when no attention worker is ready; RESOURCE_EXHAUSTED
  // "kv_capacity" when no worker could ever hold it; RESOURCE_EXHAUSTED "queue_full". *reason gets
  // the rejection label.
  absl::Status Submit(std::shared_ptr<PendingRequest> request, std::string* reason);
  // Removes a queued request; false if it is not queued (placement may be under way).
  bool Cancel(const PendingRequest* request);
  // A call to worker `index` broke (the worker died or went away): nothing is placed on it until a
  // load poll issued after now says it is ready again.
  void ReportFailure(size_t index);
  // Whether a worker other than `index` is ready (where a failed request could go).
  bool AnotherWorkerReady(size_t index) const;

  // Replaces the set of attention workers (HOST:PORT each; duplicates count once). Workers not in
  // `addresses` are removed, new ones added (not ready until their first good load poll).
  // INVALID_ARGUMENT naming `source` (the flag or file the list came from) and the bad address;
  // the set is then unchanged.
  absl::Status SetAttentionWorkers(const std::vector<std::string>& addresses, const std::string& source);
  // The addresses of the current (not removed) workers, in the order they were first added.
  std::vector<std::string> attention_workers() const;

  AttentionClient& worker(size_t index);
  // Current (not removed) attention workers.
  size_t num_workers() const;
  // Of those, the ones whose last load poll said ready (the ones requests go to).
  size_t num_ready_workers() const;
  bool ready() const;
  size_t queued() const;

 private:
  struct Reservation {
    uint64_t id;
    absl::Time placed;
    int64_t blocks;
  };
  struct Worker {
    WorkerView view;
    std::vector<Reservation> reservations;
    bool poll_in_flight = false;
    absl::Time failed_at = absl::InfinitePast();  // ReportFailure, or (re)added
    bool removed = false;                         // SetAttentionWorkers dropped it
  };

  void Loop();
  void IssuePolls(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnLoad(size_t index, absl::Time issued, const grpc::Status& status, const moe::v1::WorkerLoad& load);
  void UpdateMetrics(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int NumReadyLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const AttentionWorkerPoolOptions options_;
  RouterMetrics* const metrics_;
  std::vector<std::unique_ptr<HealthClient>> experts_;

  mutable absl::Mutex mu_;
  // Index = worker index; grows only (removed workers keep their slot and client).
  std::vector<std::unique_ptr<AttentionClient>> workers_ ABSL_GUARDED_BY(mu_);
  AdmissionQueue queue_ ABSL_GUARDED_BY(mu_);
  std::vector<Worker> state_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> expert_ready_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> expert_check_in_flight_ ABSL_GUARDED_BY(mu_);
  uint64_t next_reservation_ ABSL_GUARDED_BY(mu_) = 1;
  bool kicked_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int polls_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time next_poll_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();

  std::function<void(bool)> on_ready_change_;
  std::thread thread_;
};

}  // namespace moe::router

#endif  // MOE_SERVICES_ROUTER_ATTENTION_WORKER_POOL_H_
