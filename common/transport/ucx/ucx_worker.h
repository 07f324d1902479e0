// UCX context and worker setup for UcxTransport: reads UCX's configuration (UcxOptions::tls and
// keepalive_interval over the environment's UCX_* settings), creates one ucp_context and one
// serialized ucp_worker (UCS_THREAD_MODE_SERIALIZED) with Active Messages and wakeup, and releases
// both.
//
// Thread safety: Create on any thread; afterwards the worker is driven by one thread at a time,
// under UcxProgressThread's UCX lock (the progress thread or a caller on its fast path).
#ifndef MOE_COMMON_TRANSPORT_UCX_UCX_WORKER_H_
#define MOE_COMMON_TRANSPORT_UCX_UCX_WORKER_H_

#include <memory>
#include <string>

#include <ucp/api/ucp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/transport/ucx/ucx_options.h"

namespace moe::transport::ucx {

class UcxWorker {
 public:
  // The UCX error (as absl::Status, see ucx_status.h) when the context or worker cannot be made,
  // e.g. UNAVAILABLE/INTERNAL for a UCX_TLS that names no usable transport.
  static absl::StatusOr<std::unique_ptr<UcxWorker>> Create(const UcxOptions& options);
  // Destroys the worker, then the context. The progress thread must have stopped.
  ~UcxWorker();

  UcxWorker(const UcxWorker&) = delete;
  UcxWorker& operator=(const UcxWorker&) = delete;

  ucp_worker_h worker() const { return worker_; }
  // UCX's address blob of the worker (framed for peers by FrameWorkerAddress).
  const std::string& address_blob() const { return address_blob_; }

  // Registers `cb` (with `arg`) as the handler of Active Message `id`; whole messages only.
  absl::Status SetAmHandler(unsigned id, ucp_am_recv_callback_t cb, void* arg);

 private:
  UcxWorker() = default;

  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  std::string address_blob_;
};

}  // namespace moe::transport::ucx

#endif  // MOE_COMMON_TRANSPORT_UCX_UCX_WORKER_H_
