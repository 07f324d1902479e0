// Where the router's attention workers come from while it runs (docs/operations.md#scaling):
// - --attention_workers_dns NAME:PORT: NAME (in Kubernetes the attention StatefulSet's headless
//   Service, whose A/AAAA records are the ready pods) is resolved every interval and the pool gets
//   one worker per address;
// - --attention_workers_file F: a file of HOST:PORT entries (what `moectl cluster scale` rewrites),
//   re-read every interval.
// A refresh that fails (unreadable or malformed file, failed lookup) keeps the current set and logs
// why, once per distinct error; only the first refresh, at start-up, is fatal for a bad file.
//
// Thread-safe.
#ifndef MOE_SERVICES_ROUTER_WORKER_DISCOVERY_H_
#define MOE_SERVICES_ROUTER_WORKER_DISCOVERY_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "services/router/attention_worker_pool.h"

namespace moe::router {

// A workers file's entries: HOST:PORT (port 1..65535) separated by commas, spaces or newlines;
// '#' starts a comment. INVALID_ARGUMENT naming `path` and the line of a bad entry. An empty list
// is allowed (the router is then not ready).
absl::StatusOr<std::vector<std::string>> ParseWorkersFile(absl::string_view contents,
                                                          const std::string& path);

// Reads and parses the workers file at `path`; NOT_FOUND naming it when it cannot be read.
absl::StatusOr<std::vector<std::string>> ReadWorkersFile(const std::string& path);

// Validates --attention_workers_dns: NAME:PORT, a non-empty name and a port in 1..65535.
absl::Status ValidateDnsTarget(const std::string& name_port);

// Every address NAME resolves to, as "IP:PORT" ("[IP]:PORT" for IPv6), sorted and distinct.
// UNAVAILABLE naming the name when the lookup fails.
absl::StatusOr<std::vector<std::string>> ResolveWorkers(const std::string& name_port);

class WorkerDiscovery {
 public:
  using Source = std::function<absl::StatusOr<std::vector<std::string>>()>;
  // `source` gives the current list; `what` names it in logs and errors ("--attention_workers_file
  // F"). `pool` must outlive this.
  WorkerDiscovery(std::string what, Source source, absl::Duration interval, AttentionWorkerPool* pool);
  static std::unique_ptr<WorkerDiscovery> FromFile(const std::string& path, absl::Duration interval,
                                                   AttentionWorkerPool* pool);
  static std::unique_ptr<WorkerDiscovery> FromDns(const std::string& name_port, absl::Duration interval,
                                                  AttentionWorkerPool* pool);
  ~WorkerDiscovery();

  // Reads the source once and applies it to the pool; the error when that failed (the pool is then
  // unchanged).
  absl::Status Refresh();
  // Refreshes every interval on a thread of its own until Stop.
  void Start();
  void Stop();

 private:
  const std::string what_;
  const Source source_;
  const absl::Duration interval_;
  AttentionWorkerPool* const pool_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::string last_error_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace moe::router

#endif  // MOE_SERVICES_ROUTER_WORKER_DISCOVERY_H_
