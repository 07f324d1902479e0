// The receive path of UcxTransport's data messages: the Active Message handler that decodes the
// header (ucx_wire.h) and delivers the message into the transport's TaggedInbox. Eager messages
// are copied out of UCX's buffer at once; for rendezvous ones it posts ucp_am_recv_data_nbx into
// a buffer of exactly the announced size (zero-copy get) and delivers when that completes. A
// rendezvous receive that fails (the sender died mid-transfer) drops the partial message and marks
// the sender failed in the inbox.
//
// Thread safety: the handlers run on the progress thread; malformed_messages() from any thread.
// The object must outlive every request it posted: destroy it only after the worker is destroyed.
#ifndef MOE_COMMON_TRANSPORT_UCX_UCX_AM_RECEIVER_H_
#define MOE_COMMON_TRANSPORT_UCX_UCX_AM_RECEIVER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include <ucp/api/ucp.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/transport/activation_transport.h"
#include "common/transport/tagged_inbox.h"
#include "common/transport/ucx/ucx_progress_thread.h"
#include "common/transport/ucx/ucx_worker.h"

namespace moe::transport::ucx {

class UcxAmReceiver {
 public:
  // `progress` is set later (it starts after the handlers are registered) with set_progress.
  UcxAmReceiver(UcxWorker* worker, TaggedInbox* inbox) : worker_(worker), inbox_(inbox) {}

  UcxAmReceiver(const UcxAmReceiver&) = delete;
  UcxAmReceiver& operator=(const UcxAmReceiver&) = delete;

  // Registers the data message handler (kDataAmId) on the worker.
  absl::Status Register();
  // The thread whose ops-in-flight count tracks our rendezvous receives; set before it starts.
  void set_progress(UcxProgressThread* progress) { progress_ = progress; }

  // Messages with a header we cannot parse (never delivered), data or goodbye.
  uint64_t malformed_messages() const { return malformed_.load(); }
  void CountMalformed() { malformed_.fetch_add(1); }

 private:
  // A rendezvous receive in flight: the message being filled.
  struct RndvReceive {
    UcxAmReceiver* receiver;
    Message message;
  };

  static ucs_status_t OnData(void* arg, const void* header, size_t header_length, void* data, size_t length,
                             const ucp_am_recv_param_t* param);
  static void OnRndvDone(void* request, ucs_status_t status, size_t length, void* user_data);

  UcxWorker* const worker_;
  TaggedInbox* const inbox_;
  UcxProgressThread* progress_ = nullptr;
  std::atomic<uint64_t> malformed_{0};

  absl::Mutex mu_;
  // Rendezvous receives in flight, owned here until their callback (or the destructor).
  absl::flat_hash_map<RndvReceive*, std::unique_ptr<RndvReceive>> rndv_in_flight_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe::transport::ucx

#endif  // MOE_COMMON_TRANSPORT_UCX_UCX_AM_RECEIVER_H_
