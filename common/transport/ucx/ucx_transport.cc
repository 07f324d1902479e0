#include "common/transport/ucx/ucx_transport.h"

#include <sched.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "common/transport/ucx/ucx_status.h"

namespace moe::transport {
namespace {

// Active Message ids of this protocol.
constexpr unsigned kDataAmId = 1;
constexpr unsigned kGoodbyeAmId = 2;

constexpr uint32_t kWireMagic = 0x5843554d;  // "MUCX" little-endian
constexpr uint8_t kWireVersion = 1;

// The AM header of a data message: the whole MessageTag. Little-endian (the only byte order we
// run on, as moe_message.h), copied with memcpy so alignment never matters.
struct WireHeader {
  uint32_t magic;
  uint8_t version;
  uint8_t kind;
  uint16_t reserved;
  int32_t sender;
  uint32_t layer;
  uint32_t micro_batch;
  uint32_t reserved2;
  uint64_t step;
};
static_assert(std::is_trivially_copyable_v<WireHeader> && sizeof(WireHeader) == 32);

WireHeader EncodeHeader(const MessageTag& tag) {
  WireHeader h{};
  h.magic = kWireMagic;
  h.version = kWireVersion;
  h.kind = static_cast<uint8_t>(tag.kind);
  h.sender = tag.sender;
  h.layer = tag.layer;
  h.micro_batch = tag.micro_batch;
  h.step = tag.step;
  return h;
}

// False for a header of the wrong size, magic, version or kind (never delivered).
bool DecodeHeader(const void* header, size_t length, MessageTag* tag) {
  if (header == nullptr || length != sizeof(WireHeader)) return false;
  WireHeader h;
  std::memcpy(&h, header, sizeof(h));
  if (h.magic != kWireMagic || h.version != kWireVersion) return false;
  if (h.kind > static_cast<uint8_t>(MessageKind::kCombine)) return false;
  tag->kind = static_cast<MessageKind>(h.kind);
  tag->sender = h.sender;
  tag->layer = h.layer;
  tag->micro_batch = h.micro_batch;
  tag->step = h.step;
  return true;
}

// How long the progress thread sleeps at most on the event fd (a safety net for a transport whose
// events are not signalled; normally a network event or ucp_worker_signal wakes it first).
constexpr int kMaxSleepMs = 50;
// Bound on waiting for a forced endpoint close to finish.
constexpr absl::Duration kCloseTimeout = absl::Seconds(2);

// WorkerAddress() frames UCX's address blob as "MUXA" | u32 blob length | u64 instance | blob, so
// that Connect rejects a truncated or unrelated string before UCX parses it, and learns which
// incarnation of the peer it connects to.
constexpr char kAddressMagic[4] = {'M', 'U', 'X', 'A'};
constexpr size_t kAddressPrefix = sizeof(kAddressMagic) + sizeof(uint32_t) + sizeof(uint64_t);

// The goodbye active message's header.
struct GoodbyeHeader {
  int32_t sender;
  uint32_t reserved;
  uint64_t instance;
};

uint64_t NewInstanceId() {
  std::random_device device;
  return (uint64_t{device()} << 32) ^ device() ^
         static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
}

bool IsStaleFor(const MessageTag& queued, const MessageTag& wanted) {
  return queued.sender == wanted.sender && queued.kind == wanted.kind && queued.step < wanted.step;
}

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

// One Send in flight: lives on the sender's stack until the request completed (the sender waits
// for that unconditionally after aborting, see Send), so UCX's pointers to it stay valid.
struct UcxTransport::SendOp {
  UcxTransport* transport;
  WireHeader header;
  absl::Mutex mu;
  bool done ABSL_GUARDED_BY(mu) = false;
  ucs_status_t status ABSL_GUARDED_BY(mu) = UCS_OK;

  void Finish(ucs_status_t s) {
    absl::MutexLock lock(&mu);
    done = true;
    status = s;
  }
};

absl::StatusOr<std::unique_ptr<UcxTransport>> UcxTransport::Create(int32_t self, const UcxOptions& options) {
  if (self < 0) return absl::InvalidArgumentError(absl::StrCat("peer id ", self, " is negative"));
  if (options.send_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("UcxOptions.send_timeout must be positive");
  }
  std::unique_ptr<UcxTransport> transport(new UcxTransport(self, options));
  RETURN_IF_ERROR(transport->Init());
  return transport;
}

absl::Status UcxTransport::Init() {
  EnableSharedMemoryFailureReports();
  ucp_config_t* config = nullptr;
  RETURN_IF_ERROR(UcsStatusToStatus(ucp_config_read(nullptr, nullptr, &config), "ucp_config_read"));
  absl::Status status;
  if (!options_.tls.empty()) {
    status = UcsStatusToStatus(ucp_config_modify(config, "TLS", options_.tls.c_str()),
                               absl::StrCat("UCX TLS=", options_.tls));
  }
  if (status.ok() && std::getenv("UCX_KEEPALIVE_INTERVAL") == nullptr) {
    const std::string interval = absl::StrCat(absl::ToInt64Milliseconds(options_.keepalive_interval), "ms");
    status = UcsStatusToStatus(ucp_config_modify(config, "KEEPALIVE_INTERVAL", interval.c_str()),
                               "UCX KEEPALIVE_INTERVAL");
  }
  if (status.ok()) {
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES;
    params.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
    status = UcsStatusToStatus(ucp_init(&params, config, &context_), "ucp_init");
  }
  ucp_config_release(config);
  RETURN_IF_ERROR(status);

  ucp_worker_params_t worker_params{};
  worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  worker_params.thread_mode = UCS_THREAD_MODE_SINGLE;
  RETURN_IF_ERROR(
      UcsStatusToStatus(ucp_worker_create(context_, &worker_params, &worker_), "ucp_worker_create"));

  ucp_address_t* address = nullptr;
  size_t address_length = 0;
  RETURN_IF_ERROR(UcsStatusToStatus(ucp_worker_get_address(worker_, &address, &address_length),
                                    "ucp_worker_get_address"));
  const uint32_t blob_length = static_cast<uint32_t>(address_length);
  instance_ = NewInstanceId();
  const GoodbyeHeader goodbye{self_, 0, instance_};
  static_assert(sizeof(goodbye) == sizeof(goodbye_header_));
  std::memcpy(goodbye_header_.data(), &goodbye, sizeof(goodbye));
  address_.assign(kAddressMagic, sizeof(kAddressMagic));
  address_.append(reinterpret_cast<const char*>(&blob_length), sizeof(blob_length));
  address_.append(reinterpret_cast<const char*>(&instance_), sizeof(instance_));
  address_.append(reinterpret_cast<const char*>(address), address_length);
  ucp_worker_release_address(worker_, address);

  for (auto [id, cb] :
       {std::pair{kDataAmId, &UcxTransport::OnData}, std::pair{kGoodbyeAmId, &UcxTransport::OnGoodbye}}) {
    ucp_am_handler_param_t handler{};
    handler.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                         UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
    handler.id = id;
    handler.cb = cb;
    handler.arg = this;
    handler.flags = UCP_AM_FLAG_WHOLE_MSG;
    RETURN_IF_ERROR(UcsStatusToStatus(ucp_worker_set_am_recv_handler(worker_, &handler),
                                      "ucp_worker_set_am_recv_handler"));
  }

  int event_fd = -1;
  RETURN_IF_ERROR(UcsStatusToStatus(ucp_worker_get_efd(worker_, &event_fd), "ucp_worker_get_efd"));
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) return absl::InternalError(absl::StrCat("epoll_create1: ", strerror(errno)));
  epoll_event event{};
  event.events = EPOLLIN;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, event_fd, &event) != 0) {
    return absl::InternalError(absl::StrCat("epoll_ctl: ", strerror(errno)));
  }

  progress_thread_ = std::thread([this] { ProgressLoop(); });
  return absl::OkStatus();
}

UcxTransport::~UcxTransport() {
  if (progress_thread_.joinable()) {
    Shutdown();
    {
      absl::MutexLock lock(&commands_mu_);
      progress_stopped_ = true;
    }
    stop_progress_.store(true);
    ucp_worker_signal(worker_);
    progress_thread_.join();
    // Endpoints were closed by Shutdown; commands posted since have been refused.
  }
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  if (context_ != nullptr) ucp_cleanup(context_);
  if (epoll_fd_ >= 0) close(epoll_fd_);
}

absl::Status UcxTransport::RunOnProgressThread(std::function<absl::Status()> fn) {
  absl::Mutex done_mu;
  bool done = false;
  absl::Status result;
  {
    absl::MutexLock lock(&commands_mu_);
    if (progress_stopped_) return absl::CancelledError("transport shut down");
    commands_.push_back([&] {
      absl::Status s = fn();
      absl::MutexLock done_lock(&done_mu);
      result = std::move(s);
      done = true;
    });
    has_commands_.store(true, std::memory_order_release);
  }
  ucp_worker_signal(worker_);
  // Unbounded on purpose: the progress thread runs every posted command (also while stopping)
  // and each command is bounded, so this returns; returning earlier would leave `fn` dangling.
  absl::MutexLock lock(&done_mu);
  done_mu.Await(absl::Condition(&done));
  return result;
}

bool UcxTransport::RunPostedCommands() {
  if (!has_commands_.load(std::memory_order_acquire)) return false;
  std::deque<std::function<void()>> commands;
  {
    absl::MutexLock lock(&commands_mu_);
    commands.swap(commands_);
    has_commands_.store(false, std::memory_order_relaxed);
  }
  for (auto& command : commands) command();
  return !commands.empty();
}

void UcxTransport::ProgressLoop() {
  absl::Time last_activity = absl::Now();
  for (;;) {
    bool active = RunPostedCommands();
    if (stop_progress_.load()) {
      // Refused commands cannot be posted any more (progress_stopped_); run the last ones.
      RunPostedCommands();
      return;
    }
    while (ucp_worker_progress(worker_) != 0) active = true;
    if (!endpoints_to_close_.empty()) {
      CloseFailedEndpoints();
      active = true;
    }
    const absl::Time now = absl::Now();
    if (active) {
      last_activity = now;
      continue;
    }
    if (ops_in_flight_ > 0) {
      // Some protocol steps (rendezvous fragments over shared memory) raise no event on the
      // worker's fd, so while our own operations are in flight we poll, yielding the core.
      sched_yield();
      continue;
    }
    if (now - last_activity < options_.busy_poll) continue;
    const ucs_status_t armed = ucp_worker_arm(worker_);
    if (armed == UCS_ERR_BUSY) continue;  // events arrived meanwhile
    // A command posted before arming may have had its signal drained by the arm.
    if (has_commands_.load(std::memory_order_acquire) || stop_progress_.load()) continue;
    epoll_event event;
    epoll_wait(epoll_fd_, &event, 1, armed == UCS_OK ? kMaxSleepMs : 1);
  }
}

void UcxTransport::CloseEndpointNow(ucp_ep_h ep) {
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_EP_CLOSE_FLAG_FORCE;
  ucs_status_ptr_t request = ucp_ep_close_nbx(ep, &param);
  if (!UCS_PTR_IS_PTR(request)) return;
  const absl::Time deadline = absl::Now() + kCloseTimeout;
  while (ucp_request_check_status(request) == UCS_INPROGRESS && absl::Now() < deadline) {
    ucp_worker_progress(worker_);
  }
  ucp_request_free(request);  // releases it now or when it completes
}

void UcxTransport::CloseFailedEndpoints() {
  std::vector<ucp_ep_h> to_close;
  to_close.swap(endpoints_to_close_);
  for (ucp_ep_h ep : to_close) {
    for (auto it = endpoints_.begin(); it != endpoints_.end(); ++it) {
      if (it->second == ep) {
        endpoints_.erase(it);
        CloseEndpointNow(ep);
        break;
      }
    }
  }
}

void UcxTransport::SayGoodbyeAndCloseAll() {
  std::vector<ucs_status_ptr_t> requests;
  for (const auto& [peer, ep] : endpoints_) {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_AM_SEND_FLAG_EAGER;
    ucs_status_ptr_t request =
        ucp_am_send_nbx(ep, kGoodbyeAmId, goodbye_header_.data(), goodbye_header_.size(), nullptr, 0, &param);
    if (UCS_PTR_IS_PTR(request)) requests.push_back(request);
  }
  const absl::Time deadline = absl::Now() + options_.goodbye_timeout;
  for (ucs_status_ptr_t request : requests) {
    while (ucp_request_check_status(request) == UCS_INPROGRESS && absl::Now() < deadline) {
      ucp_worker_progress(worker_);
    }
    ucp_request_free(request);
  }
  for (const auto& [peer, ep] : endpoints_) CloseEndpointNow(ep);
  endpoints_.clear();
  endpoints_to_close_.clear();
}

absl::Status UcxTransport::Connect(int32_t peer, std::string_view address) {
  if (peer < 0) return absl::InvalidArgumentError(absl::StrCat("peer id ", peer, " is negative"));
  uint32_t blob_length = 0;
  if (address.size() > kAddressPrefix) {
    std::memcpy(&blob_length, address.data() + sizeof(kAddressMagic), sizeof(blob_length));
  }
  if (address.size() <= kAddressPrefix ||
      std::memcmp(address.data(), kAddressMagic, sizeof(kAddressMagic)) != 0 ||
      blob_length != address.size() - kAddressPrefix) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a UCX worker address from UcxTransport::WorkerAddress (", address.size(),
                     " bytes) for peer ", peer));
  }
  {
    absl::MutexLock lock(&mu_);
    if (shutdown_) return absl::CancelledError("transport shut down");
  }
  uint64_t instance = 0;
  std::memcpy(&instance, address.data() + sizeof(kAddressMagic) + sizeof(uint32_t), sizeof(instance));
  const std::string blob(address.substr(kAddressPrefix));  // aligned copy for ucp_ep_create
  RETURN_IF_ERROR(RunOnProgressThread([&]() -> absl::Status {
    if (auto it = endpoints_.find(peer); it != endpoints_.end()) {
      ucp_ep_h old = it->second;
      endpoints_.erase(it);
      CloseEndpointNow(old);
    }
    ucp_ep_params_t params{};
    params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                        UCP_EP_PARAM_FIELD_ERR_HANDLER;
    params.address = reinterpret_cast<const ucp_address_t*>(blob.data());
    params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    params.err_handler.cb = &UcxTransport::OnEndpointError;
    params.err_handler.arg = this;
    ucp_ep_h ep = nullptr;
    RETURN_IF_ERROR(
        UcsStatusToStatus(ucp_ep_create(worker_, &params, &ep), absl::StrCat("connecting to peer ", peer)));
    endpoints_[peer] = ep;
    peer_instances_[peer] = instance;
    return absl::OkStatus();
  }));
  absl::MutexLock lock(&mu_);
  failed_.erase(peer);
  return absl::OkStatus();
}

absl::Status UcxTransport::Disconnect(int32_t peer) {
  return RunOnProgressThread([&]() -> absl::Status {
    auto it = endpoints_.find(peer);
    if (it == endpoints_.end()) {
      return absl::NotFoundError(absl::StrCat("peer ", peer, " is not connected"));
    }
    ucp_ep_h ep = it->second;
    endpoints_.erase(it);
    CloseEndpointNow(ep);
    return absl::OkStatus();
  });
}

absl::StatusOr<std::string> UcxTransport::DescribeEndpoint(int32_t peer) {
  std::string description;
  RETURN_IF_ERROR(RunOnProgressThread([&]() -> absl::Status {
    auto it = endpoints_.find(peer);
    if (it == endpoints_.end()) {
      return absl::NotFoundError(absl::StrCat("peer ", peer, " is not connected"));
    }
    char* buffer = nullptr;
    size_t size = 0;
    FILE* stream = open_memstream(&buffer, &size);
    if (stream == nullptr) return absl::InternalError("open_memstream failed");
    ucp_ep_print_info(it->second, stream);
    std::fclose(stream);
    description.assign(buffer, size);
    std::free(buffer);
    return absl::OkStatus();
  }));
  return description;
}

absl::Status UcxTransport::Send(int32_t peer, const MessageTag& tag, std::span<const std::byte> payload) {
  if (tag.sender != self_) {
    return absl::InvalidArgumentError(absl::StrCat("tag.sender ", tag.sender, " != self ", self_));
  }
  {
    absl::MutexLock lock(&mu_);
    if (shutdown_) return absl::CancelledError("transport shut down");
    if (auto it = failed_.find(peer); it != failed_.end()) return it->second;
  }
  SendOp op;
  op.transport = this;
  op.header = EncodeHeader(tag);
  RETURN_IF_ERROR(RunOnProgressThread([&]() -> absl::Status {
    auto it = endpoints_.find(peer);
    if (it == endpoints_.end()) {
      return absl::UnavailableError(absl::StrCat("peer ", peer, " is not connected"));
    }
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
    param.cb.send = &UcxTransport::OnSendDone;
    param.user_data = &op;
    param.flags = (options_.rndv_threshold > 0 && payload.size() >= options_.rndv_threshold)
                      ? UCP_AM_SEND_FLAG_RNDV
                      : 0;
    ucs_status_ptr_t request = ucp_am_send_nbx(it->second, kDataAmId, &op.header, sizeof(op.header),
                                               payload.data(), payload.size(), &param);
    if (UCS_PTR_IS_ERR(request)) {
      op.Finish(UCS_PTR_STATUS(request));
    } else if (request == nullptr) {
      op.Finish(UCS_OK);
    } else {
      ++ops_in_flight_;  // OnSendDone finishes `op`, frees the request, decrements
    }

    return absl::OkStatus();
  }));

  bool completed;
  {
    absl::MutexLock lock(&op.mu);
    completed = op.mu.AwaitWithTimeout(absl::Condition(&op.done), options_.send_timeout);
  }
  if (!completed) {
    // The peer neither took the message nor failed: abort the endpoint, which completes every
    // request on it with an error (UCX guarantees this for a forced close); below we wait for ours
    // so UCX no longer reads `payload` or `op` when we return.
    MarkFailed(peer, absl::UnavailableError(absl::StrCat("peer ", peer, " did not take a ", payload.size(),
                                                         "-byte message in ",
                                                         absl::FormatDuration(options_.send_timeout))));
    RunOnProgressThread([&]() -> absl::Status {
      if (auto it = endpoints_.find(peer); it != endpoints_.end()) {
        ucp_ep_h ep = it->second;
        endpoints_.erase(it);
        CloseEndpointNow(ep);
      }
      return absl::OkStatus();
    }).IgnoreError();
  }
  ucs_status_t status;
  {
    absl::MutexLock lock(&op.mu);
    op.mu.Await(absl::Condition(&op.done));
    status = op.status;
  }
  if (status == UCS_OK) return absl::OkStatus();
  absl::Status error = UcsStatusToStatus(status, absl::StrCat("sending to peer ", peer));
  if (status == UCS_ERR_CANCELED || IsUcsPeerFailure(status)) {
    absl::MutexLock lock(&mu_);
    if (shutdown_) return absl::CancelledError("transport shut down during send");
    if (auto it = failed_.find(peer); it != failed_.end()) return it->second;
    return absl::UnavailableError(error.message());
  }
  return error;
}

void UcxTransport::OnSendDone(void* request, ucs_status_t status, void* user_data) {
  // Freeing before completion would suppress this callback, so the request is freed here.
  ucp_request_free(request);
  auto* op = static_cast<SendOp*>(user_data);
  --op->transport->ops_in_flight_;
  op->Finish(status);
}

void UcxTransport::Deliver(Message message) {
  absl::MutexLock lock(&mu_);
  if (shutdown_) return;
  inbox_.push_back(std::move(message));
}

void UcxTransport::MarkFailed(int32_t peer, absl::Status why) {
  absl::MutexLock lock(&mu_);
  if (!failed_.contains(peer)) failed_.emplace(peer, std::move(why));
  ++failure_generation_;
}

ucs_status_t UcxTransport::OnData(void* arg, const void* header, size_t header_length, void* data,
                                  size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxTransport*>(arg);
  Message message;
  if (!DecodeHeader(header, header_length, &message.tag)) {
    absl::MutexLock lock(&self->mu_);
    ++self->malformed_;
    return UCS_OK;  // drops it (a rendezvous sender completes normally)
  }
  {
    absl::MutexLock lock(&self->mu_);
    if (self->shutdown_) return UCS_OK;
  }
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) == 0) {
    const auto* bytes = static_cast<const std::byte*>(data);
    message.payload.assign(bytes, bytes + length);
    self->Deliver(std::move(message));
    return UCS_OK;
  }
  // Rendezvous: pull the data straight into the message buffer.
  auto receive = std::make_unique<RndvReceive>();
  receive->transport = self;
  receive->message = std::move(message);
  receive->message.payload.resize(length);
  RndvReceive* raw = receive.get();
  {
    absl::MutexLock lock(&self->mu_);
    self->rndv_in_flight_.emplace(raw, std::move(receive));
  }
  ucp_request_param_t recv_param{};
  recv_param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  recv_param.cb.recv_am = &UcxTransport::OnRndvDone;
  recv_param.user_data = raw;
  ucs_status_ptr_t request =
      ucp_am_recv_data_nbx(self->worker_, data, raw->message.payload.data(), length, &recv_param);
  // A request completes through OnRndvDone (which frees it); otherwise it finished already.
  if (UCS_PTR_IS_PTR(request)) {
    ++self->ops_in_flight_;
  } else {
    OnRndvDone(nullptr, UCS_PTR_STATUS(request), length, raw);
  }
  return UCS_INPROGRESS;  // UCX owns `data` now (ucp_am_recv_data_nbx took it)
}

void UcxTransport::OnRndvDone(void* request, ucs_status_t status, size_t length, void* user_data) {
  auto* raw = static_cast<RndvReceive*>(user_data);
  UcxTransport* self = raw->transport;
  if (request != nullptr) {
    ucp_request_free(request);
    --self->ops_in_flight_;
  }
  std::unique_ptr<RndvReceive> receive;
  {
    absl::MutexLock lock(&self->mu_);
    auto node = self->rndv_in_flight_.extract(raw);
    if (node.empty()) return;
    receive = std::move(node.mapped());
  }
  const int32_t sender = receive->message.tag.sender;
  if (status != UCS_OK) {
    // The sender died (or we are closing) mid-transfer: the partial message is dropped.
    self->MarkFailed(sender, absl::UnavailableError(absl::StrCat("receiving from peer ", sender, ": ",
                                                                 ucs_status_string(status))));
    return;
  }
  self->Deliver(std::move(receive->message));
}

ucs_status_t UcxTransport::OnGoodbye(void* arg, const void* header, size_t header_length, void* data,
                                     size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxTransport*>(arg);
  GoodbyeHeader goodbye;
  if (header == nullptr || header_length != sizeof(goodbye)) {
    absl::MutexLock lock(&self->mu_);
    ++self->malformed_;
    return UCS_OK;
  }
  std::memcpy(&goodbye, header, sizeof(goodbye));
  const int32_t sender = goodbye.sender;
  if (auto it = self->peer_instances_.find(sender);
      it == self->peer_instances_.end() || it->second != goodbye.instance) {
    return UCS_OK;  // a goodbye from an incarnation we are no longer connected to
  }
  self->MarkFailed(sender, absl::UnavailableError(absl::StrCat("peer ", sender, " shut down")));
  // Our endpoint to it is useless now; close it after this callback (not inside progress).
  if (auto it = self->endpoints_.find(sender); it != self->endpoints_.end()) {
    self->endpoints_to_close_.push_back(it->second);
  }
  return UCS_OK;
}

void UcxTransport::OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status) {
  auto* self = static_cast<UcxTransport*>(arg);
  for (const auto& [peer, endpoint] : self->endpoints_) {
    if (endpoint != ep) continue;
    self->MarkFailed(
        peer, absl::UnavailableError(absl::StrCat("peer ", peer, " failed: ", ucs_status_string(status))));
    break;
  }
  self->endpoints_to_close_.push_back(ep);
}

absl::StatusOr<Message> UcxTransport::ReceiveAny(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return shutdown_ || !inbox_.empty(); };
  mu_.AwaitWithDeadline(absl::Condition(&ready), deadline);
  if (shutdown_) return absl::CancelledError("transport shut down");
  if (inbox_.empty()) return absl::UnavailableError("no message from any peer before the deadline");
  Message message = std::move(inbox_.front());
  inbox_.pop_front();
  return message;
}

absl::StatusOr<Message> UcxTransport::ReceiveTagged(const MessageTag& tag, absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  for (;;) {
    if (shutdown_) return absl::CancelledError("transport shut down");
    for (auto it = inbox_.begin(); it != inbox_.end();) {
      if (it->tag == tag) {
        Message message = std::move(*it);
        inbox_.erase(it);
        return message;
      }
      if (IsStaleFor(it->tag, tag)) {
        ++dropped_;  // a late answer of an abandoned round
        it = inbox_.erase(it);
        continue;
      }
      ++it;
    }
    if (auto it = failed_.find(tag.sender); it != failed_.end()) {
      return absl::UnavailableError(
          absl::StrCat("waiting for ", tag.DebugString(), ": ", it->second.message()));
    }
    const size_t seen = inbox_.size();
    const uint64_t generation = failure_generation_;
    auto changed = [this, seen, generation]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return shutdown_ || inbox_.size() != seen || failure_generation_ != generation;
    };
    if (!mu_.AwaitWithDeadline(absl::Condition(&changed), deadline)) {
      return absl::UnavailableError(
          absl::StrCat("peer ", tag.sender, " did not answer ", tag.DebugString(), " in time"));
    }
  }
}

void UcxTransport::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (shutdown_) return;
    shutdown_ = true;
    inbox_.clear();
  }
  RunOnProgressThread([this]() -> absl::Status {
    SayGoodbyeAndCloseAll();
    return absl::OkStatus();
  }).IgnoreError();
}

uint64_t UcxTransport::dropped_messages() const {
  absl::MutexLock lock(&mu_);
  return dropped_;
}

uint64_t UcxTransport::malformed_messages() const {
  absl::MutexLock lock(&mu_);
  return malformed_;
}

}  // namespace moe::transport
