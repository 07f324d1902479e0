#include "common/transport/ucx/ucx_worker.h"

#include <cstdlib>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "common/transport/ucx/ucx_status.h"

namespace moe::transport::ucx {
namespace {

// Shared memory reports no peer failures unless asked to (UCX's default is off), and a transport
// without failure reporting is excluded from our UCP_ERR_HANDLING_MODE_PEER endpoints: without
// this, shared memory would silently never be used. These are transport-level settings that
// ucp_config_modify cannot set, so they go into the environment, once per process, before the
// first ucp_config_read; values the user set win (setenv without overwrite).
void EnableSharedMemoryFailureReports() {
  static std::once_flag once;
  std::call_once(once, [] {
    setenv("UCX_POSIX_ERROR_HANDLING", "y", /*overwrite=*/0);
    setenv("UCX_SYSV_ERROR_HANDLING", "y", /*overwrite=*/0);
  });
}

}  // namespace

absl::StatusOr<std::unique_ptr<UcxWorker>> UcxWorker::Create(const UcxOptions& options) {
  std::unique_ptr<UcxWorker> self(new UcxWorker());
  EnableSharedMemoryFailureReports();
  ucp_config_t* config = nullptr;
  RETURN_IF_ERROR(UcsStatusToStatus(ucp_config_read(nullptr, nullptr, &config), "ucp_config_read"));
  absl::Status status;
  if (!options.tls.empty()) {
    status = UcsStatusToStatus(ucp_config_modify(config, "TLS", options.tls.c_str()),
                               absl::StrCat("UCX TLS=", options.tls));
  }
  if (status.ok() && std::getenv("UCX_KEEPALIVE_INTERVAL") == nullptr) {
    const std::string interval = absl::StrCat(absl::ToInt64Milliseconds(options.keepalive_interval), "ms");
    status = UcsStatusToStatus(ucp_config_modify(config, "KEEPALIVE_INTERVAL", interval.c_str()),
                               "UCX KEEPALIVE_INTERVAL");
  }
  if (status.ok()) {
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES;
    params.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
    status = UcsStatusToStatus(ucp_init(&params, config, &self->context_), "ucp_init");
  }
  ucp_config_release(config);
  RETURN_IF_ERROR(status);

  ucp_worker_params_t worker_params{};
  worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  worker_params.thread_mode = UCS_THREAD_MODE_SERIALIZED;
  RETURN_IF_ERROR(UcsStatusToStatus(ucp_worker_create(self->context_, &worker_params, &self->worker_),
                                    "ucp_worker_create"));

  ucp_address_t* address = nullptr;
  size_t address_length = 0;
  RETURN_IF_ERROR(UcsStatusToStatus(ucp_worker_get_address(self->worker_, &address, &address_length),
                                    "ucp_worker_get_address"));
  self->address_blob_.assign(reinterpret_cast<const char*>(address), address_length);
  ucp_worker_release_address(self->worker_, address);
  return self;
}

UcxWorker::~UcxWorker() {
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  if (context_ != nullptr) ucp_cleanup(context_);
}

absl::Status UcxWorker::SetAmHandler(unsigned id, ucp_am_recv_callback_t cb, void* arg) {
  ucp_am_handler_param_t handler{};
  handler.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                       UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
  handler.id = id;
  handler.cb = cb;
  handler.arg = arg;
  handler.flags = UCP_AM_FLAG_WHOLE_MSG;
  return UcsStatusToStatus(ucp_worker_set_am_recv_handler(worker_, &handler),
                           "ucp_worker_set_am_recv_handler");
}

}  // namespace moe::transport::ucx
