#include "common/transport/nccl/nccl_transport.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/status/status_macros.h"

namespace moe::transport {
namespace {

constexpr uint32_t kHeaderMagic = 0x4e434d4f;  // "OMCN" little-endian: a MoE NCCL round header

// Header layout (little-endian): magic u32 | kind u8 + 3 zero bytes | step u64 | layer u32 |
// micro_batch u32 | sender i32 | reserved u32 | payload bytes u64.
void Put(unsigned char* out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out[i] = static_cast<unsigned char>((v >> (8 * i)) & 0xff);
}
uint64_t Get(const unsigned char* in, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(in[i]) << (8 * i);
  return v;
}

void EncodeHeader(const MessageTag& tag, uint64_t bytes, unsigned char* out) {
  std::memset(out, 0, kNcclHeaderBytes);
  Put(out, kHeaderMagic, 4);
  out[4] = static_cast<unsigned char>(tag.kind);
  Put(out + 8, tag.step, 8);
  Put(out + 16, tag.layer, 4);
  Put(out + 20, tag.micro_batch, 4);
  Put(out + 24, static_cast<uint32_t>(tag.sender), 4);
  Put(out + 32, bytes, 8);
}

// False when the magic is wrong.
bool DecodeHeader(const unsigned char* in, MessageTag* tag, uint64_t* bytes) {
  if (Get(in, 4) != kHeaderMagic) return false;
  tag->kind = static_cast<MessageKind>(in[4]);
  tag->step = Get(in + 8, 8);
  tag->layer = static_cast<uint32_t>(Get(in + 16, 4));
  tag->micro_batch = static_cast<uint32_t>(Get(in + 20, 4));
  tag->sender = static_cast<int32_t>(static_cast<uint32_t>(Get(in + 24, 4)));
  *bytes = Get(in + 32, 8);
  return true;
}

std::byte* At(void* base, size_t offset) {
  return static_cast<std::byte*>(base) + offset;
}

// A peer that died or a broken network shows up as these; anything else is our bug or misuse.
bool PeerFailure(NcclResult r) {
  return r == NcclResult::kRemoteError || r == NcclResult::kSystemError;
}

// The seam (activation_transport.h) calls a peer it cannot reach UNAVAILABLE: a transport whose
// communicator is gone (aborted, not joined yet) cannot reach anyone.
absl::Status AsSeamStatus(absl::Status s) {
  if (s.code() != absl::StatusCode::kFailedPrecondition) return s;
  return absl::UnavailableError(s.message());
}

}  // namespace

NcclTransport::NcclTransport(int32_t self, NcclApi* api, NcclTransportOptions options)
    : self_(self), api_(api), options_(options) {}

NcclTransport::~NcclTransport() {
  absl::MutexLock lock(&mu_);
  if (comm_ != nullptr) {
    // A healthy, idle communicator is destroyed; Shutdown already aborted any other.
    api_->CommDestroy(*comm_);
    comm_.reset();
  }
  for (Scratch* s : {&header_send_, &header_recv_, &payload_send_, &payload_recv_}) {
    if (s->data != nullptr) api_->FreeBuffer(s->data);
  }
}

// Without mu_: a round may hold it for as long as its deadline (an expert worker's receive has none).
bool NcclTransport::connected() const {
  return has_comm_.load();
}

uint64_t NcclTransport::generation() const {
  return published_generation_.load();
}

void NcclTransport::CountDrop(DropReason reason) {
  drops_[static_cast<int>(reason)].fetch_add(1);
}

uint64_t NcclTransport::dropped_messages() const {
  uint64_t n = 0;
  for (const auto& d : drops_) n += d.load();
  return n;
}

DropCounts NcclTransport::drop_counts() const {
  DropCounts out{};
  for (int r = 0; r < kNumDropReasons; ++r) out[r] = drops_[r].load();
  return out;
}

std::string NcclTransport::PeersText() const {
  return absl::StrJoin(peers_, ",");
}

std::string NcclTransport::InterruptText() const {
  absl::MutexLock lock(&abort_mu_);
  if (aborted_generation_ == generation_ && !abort_why_.empty()) return absl::StrCat("aborted: ", abort_why_);
  return "interrupted by a new bootstrap";
}

void NcclTransport::AbortLocked(std::string why) {
  if (comm_ == nullptr) return;
  api_->CommAbort(*comm_);
  comm_.reset();
  has_comm_.store(false);
  broken_ = std::move(why);
}

absl::Status NcclTransport::CheckUsable() const {
  if (shutdown_.load()) return absl::CancelledError("NCCL transport shut down");
  if (comm_ != nullptr) return absl::OkStatus();
  if (generation_ == 0)
    return absl::FailedPreconditionError("no NCCL communicator yet: call Rebuild with a bootstrap");
  return absl::FailedPreconditionError(absl::StrCat("NCCL communicator (generation ", generation_,
                                                    ") is gone: ", broken_,
                                                    "; Rebuild with a new bootstrap"));
}

absl::StatusOr<int> NcclTransport::RankOf(int32_t peer, const std::string& field) const {
  auto it = rank_of_.find(peer);
  if (it == rank_of_.end()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": peer ", peer,
                                                   " is not in the NCCL communicator (generation ",
                                                   generation_, ", peers ", PeersText(), ")"));
  }
  return it->second;
}

absl::Status NcclTransport::EnsureScratch(Scratch& scratch, size_t bytes) {
  if (scratch.capacity >= bytes && scratch.data != nullptr) return absl::OkStatus();
  if (scratch.data != nullptr) api_->FreeBuffer(scratch.data);
  scratch = Scratch{};
  const size_t want = std::max<size_t>((bytes + 4095) / 4096 * 4096, 4096);
  ASSIGN_OR_RETURN(scratch.data, api_->AllocBuffer(want));
  scratch.capacity = want;
  return absl::OkStatus();
}

absl::Status NcclTransport::Rebuild(const NcclBootstrap& bootstrap, absl::Time deadline) {
  RETURN_IF_ERROR(ValidateNcclBootstrap(bootstrap));
  const auto self_it = std::find(bootstrap.peers.begin(), bootstrap.peers.end(), self_);
  if (self_it == bootstrap.peers.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("bootstrap.peers: does not list this worker's peer id ", self_));
  }
  const int rank = static_cast<int>(self_it - bootstrap.peers.begin());
  const int nranks = static_cast<int>(bootstrap.peers.size());

  absl::MutexLock lock(&mu_);
  if (shutdown_.load()) return absl::CancelledError("NCCL transport shut down");
  if (bootstrap.generation <= generation_) {
    return absl::FailedPreconditionError(absl::StrCat("bootstrap.generation: ", bootstrap.generation,
                                                      " is not above the current generation ", generation_));
  }
  // Leave the old communicator without waiting for anyone: its peers may be dead.
  AbortLocked(absl::StrCat("replaced by generation ", bootstrap.generation));
  generation_ = bootstrap.generation;
  published_generation_.store(generation_);
  peers_ = bootstrap.peers;
  rank_of_.clear();
  for (int r = 0; r < nranks; ++r) rank_of_[peers_[r]] = r;
  broken_ = "its join did not complete";

  std::unique_ptr<NcclComm> comm;
  const NcclResult started = api_->CommInitRank(nranks, bootstrap.unique_id, rank, &comm);
  if (started != NcclResult::kSuccess && started != NcclResult::kInProgress) {
    const std::string text =
        absl::StrCat("NCCL refused to join generation ", generation_, " as rank ", rank, " of ", nranks, ": ",
                     NcclResultName(started), " ", api_->LastError(nullptr));
    broken_ = text;
    return PeerFailure(started) ? absl::UnavailableError(text) : absl::InternalError(text);
  }
  comm_ = std::move(comm);
  has_comm_.store(true);
  absl::Duration sleep = absl::Microseconds(20);
  while (true) {
    if (shutdown_.load()) {
      AbortLocked("shut down");
      return absl::CancelledError("NCCL transport shut down while joining a communicator");
    }
    if (interrupt_below_.load() > generation_) {
      const std::string text =
          absl::StrCat("joining NCCL communicator generation ", generation_, " ", InterruptText());
      AbortLocked(text);
      return absl::UnavailableError(text);
    }
    NcclResult state = NcclResult::kSuccess;
    const NcclResult r = api_->CommGetAsyncError(*comm_, &state);
    if (r != NcclResult::kSuccess) state = r;
    if (state == NcclResult::kSuccess) {
      broken_.clear();
      return absl::OkStatus();
    }
    if (state != NcclResult::kInProgress) {
      const std::string text = absl::StrCat("joining NCCL communicator generation ", generation_, " (peers ",
                                            PeersText(), ") failed: ", NcclResultName(state), " ",
                                            api_->LastError(comm_.get()), "; attempt aborted");
      AbortLocked(text);
      return PeerFailure(state) ? absl::UnavailableError(text) : absl::InternalError(text);
    }
    if (absl::Now() >= deadline) {
      const std::string text =
          absl::StrCat("NCCL communicator generation ", generation_, ": not every peer of ", PeersText(),
                       " joined by the deadline; attempt aborted");
      AbortLocked(text);
      return absl::UnavailableError(text);
    }
    absl::SleepFor(sleep);
    sleep = std::min(sleep * 2, options_.max_poll_interval);
  }
}

absl::Status NcclTransport::RunGroup(std::span<const Op> ops, const char* stage, absl::Time deadline) {
  if (ops.empty()) return absl::OkStatus();
  NcclResult failed = api_->GroupStart();
  if (failed == NcclResult::kSuccess) {
    for (const Op& op : ops) {
      const NcclResult r = op.is_send ? api_->Send(*comm_, op.data, op.bytes, op.rank)
                                      : api_->Recv(*comm_, op.data, op.bytes, op.rank);
      if (r != NcclResult::kSuccess) {
        failed = r;
        break;
      }
    }
    // A group that was started is always ended, even after a failed call.
    const NcclResult ended = api_->GroupEnd();
    if (failed == NcclResult::kSuccess && ended != NcclResult::kInProgress) failed = ended;
  }
  if (failed != NcclResult::kSuccess) {
    const std::string text =
        absl::StrCat("NCCL ", stage, " stage could not be posted: ", NcclResultName(failed), " ",
                     api_->LastError(comm_.get()), "; communicator aborted");
    AbortLocked(text);
    return PeerFailure(failed) ? absl::UnavailableError(text) : absl::InternalError(text);
  }
  return Wait(ops, stage, deadline);
}

absl::Status NcclTransport::Wait(std::span<const Op> ops, const char* stage, absl::Time deadline) {
  std::vector<int32_t> peers;
  for (const Op& op : ops) peers.push_back(op.peer);
  std::sort(peers.begin(), peers.end());
  peers.erase(std::unique(peers.begin(), peers.end()), peers.end());
  const std::string who = absl::StrCat(peers.size() == 1 ? "peer " : "peers ", absl::StrJoin(peers, ","));

  absl::Duration sleep = absl::Microseconds(20);
  while (true) {
    if (shutdown_.load()) {
      AbortLocked("shut down");
      return absl::CancelledError(
          absl::StrCat("NCCL transport shut down during the ", stage, " stage with ", who));
    }
    if (interrupt_below_.load() > generation_) {
      const std::string text = absl::StrCat("NCCL ", stage, " stage with ", who, " ", InterruptText(),
                                            "; communicator generation ", generation_, " aborted");
      AbortLocked(text);
      return absl::UnavailableError(text);
    }
    NcclResult state = NcclResult::kSuccess;
    const NcclResult r = api_->CommGetAsyncError(*comm_, &state);
    if (r != NcclResult::kSuccess) state = r;
    if (state == NcclResult::kSuccess) {
      const NcclResult q = api_->StreamQuery(*comm_);
      if (q == NcclResult::kSuccess) return absl::OkStatus();
      if (q != NcclResult::kInProgress) state = q;
    }
    if (state != NcclResult::kSuccess && state != NcclResult::kInProgress) {
      const std::string text =
          absl::StrCat("NCCL ", stage, " stage with ", who, " failed: ", NcclResultName(state), " ",
                       api_->LastError(comm_.get()), "; communicator generation ", generation_, " aborted");
      AbortLocked(text);
      return PeerFailure(state) ? absl::UnavailableError(text) : absl::InternalError(text);
    }
    if (absl::Now() >= deadline) {
      const std::string text =
          absl::StrCat("NCCL ", stage, " stage: no completion with ", who,
                       " by the round's deadline; communicator generation ", generation_, " aborted");
      AbortLocked(text);
      return absl::UnavailableError(text);
    }
    absl::SleepFor(sleep);
    sleep = std::min(sleep * 2, options_.max_poll_interval);
  }
}

absl::StatusOr<std::vector<size_t>> NcclTransport::ExchangeCounts(std::span<const DeviceSend> sends,
                                                                  std::span<DeviceReceive> expect, bool host,
                                                                  absl::Time deadline,
                                                                  absl::Status* mismatch) {
  RETURN_IF_ERROR(EnsureScratch(header_send_, sends.size() * kNcclHeaderBytes));
  RETURN_IF_ERROR(EnsureScratch(header_recv_, expect.size() * kNcclHeaderBytes));
  std::vector<unsigned char> headers(std::max(sends.size(), expect.size()) * kNcclHeaderBytes);
  for (size_t i = 0; i < sends.size(); ++i) {
    EncodeHeader(sends[i].tag, sends[i].bytes, headers.data() + i * kNcclHeaderBytes);
  }
  if (!sends.empty()) {
    RETURN_IF_ERROR(api_->CopyToBuffer(header_send_.data, headers.data(), sends.size() * kNcclHeaderBytes));
  }
  std::vector<Op> ops;
  for (size_t i = 0; i < sends.size(); ++i) {
    ops.push_back(Op{rank_of_.at(sends[i].peer), sends[i].peer, At(header_send_.data, i * kNcclHeaderBytes),
                     kNcclHeaderBytes, true});
  }
  for (size_t j = 0; j < expect.size(); ++j) {
    ops.push_back(Op{rank_of_.at(expect[j].peer), expect[j].peer, At(header_recv_.data, j * kNcclHeaderBytes),
                     kNcclHeaderBytes, false});
  }
  RETURN_IF_ERROR(RunGroup(ops, "counts", deadline));
  if (!expect.empty()) {
    RETURN_IF_ERROR(
        api_->CopyFromBuffer(headers.data(), header_recv_.data, expect.size() * kNcclHeaderBytes));
  }
  std::vector<size_t> sizes(expect.size());
  for (size_t j = 0; j < expect.size(); ++j) {
    MessageTag got;
    uint64_t bytes = 0;
    const int32_t peer = expect[j].peer;
    if (!DecodeHeader(headers.data() + j * kNcclHeaderBytes, &got, &bytes)) {
      CountDrop(DropReason::kMalformed);
      const std::string text = absl::StrCat("peer ", peer, " sent a malformed round header (bad magic)");
      AbortLocked(text);
      return absl::InternalError(absl::StrCat(text, "; communicator generation ", generation_, " aborted"));
    }
    if (bytes > expect[j].capacity) {
      CountDrop(DropReason::kTooLarge);
      const std::string text = absl::StrCat(
          "peer ", peer, " announced ", bytes, " bytes for ", got.DebugString(), ", more than ",
          host ? "max_message_bytes " : "the pre-posted receive's capacity ", expect[j].capacity);
      AbortLocked(text);
      const std::string full = absl::StrCat(text, "; communicator generation ", generation_, " aborted");
      return host ? absl::InternalError(full) : absl::ResourceExhaustedError(full);
    }
    const MessageTag& want = expect[j].tag;
    const bool matches =
        expect[j].any_step ? got.kind == want.kind && got.sender == want.sender : got == want;
    if (matches && expect[j].any_step) expect[j].tag = got;
    if (!matches) {
      CountDrop(got.step != expect[j].tag.step ? DropReason::kStepWindow : DropReason::kMalformed);
      if (mismatch->ok()) {
        *mismatch = absl::InternalError(absl::StrCat("from peer ", peer, ": expected ",
                                                     expect[j].tag.DebugString(), ", got ", got.DebugString(),
                                                     " (its payload was received and dropped)"));
      }
    }
    sizes[j] = static_cast<size_t>(bytes);
  }
  return sizes;
}

absl::StatusOr<std::vector<size_t>> NcclTransport::RoundLocked(std::span<const DeviceSend> sends,
                                                               std::vector<DeviceReceive>& expect, bool host,
                                                               absl::Time deadline) {
  RETURN_IF_ERROR(CheckUsable());
  for (size_t i = 0; i < sends.size(); ++i) {
    const std::string field = absl::StrCat("sends[", i, "]");
    RETURN_IF_ERROR(RankOf(sends[i].peer, absl::StrCat(field, ".peer")).status());
    if (sends[i].tag.sender != self_) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".tag.sender: ", sends[i].tag.sender, ", but this worker is peer ", self_));
    }
    if (sends[i].bytes > options_.max_message_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(field, (host ? ".payload: " : ".bytes: "),
                                                     sends[i].bytes, " bytes, more than max_message_bytes ",
                                                     options_.max_message_bytes));
    }
    if (sends[i].bytes > 0 && sends[i].data == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".data: null with ", sends[i].bytes, " bytes"));
    }
  }
  for (size_t j = 0; j < expect.size(); ++j) {
    const std::string field = absl::StrCat("expect[", j, "]");
    RETURN_IF_ERROR(RankOf(expect[j].peer, absl::StrCat(field, ".peer")).status());
    if (expect[j].tag.sender != expect[j].peer) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".tag.sender: ", expect[j].tag.sender,
                                                     ", but the message is expected from peer ",
                                                     expect[j].peer));
    }
    if (!host && expect[j].capacity > 0 && expect[j].data == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".data: null with capacity ", expect[j].capacity));
    }
  }

  absl::Status mismatch = absl::OkStatus();
  ASSIGN_OR_RETURN(std::vector<size_t> sizes, ExchangeCounts(sends, expect, host, deadline, &mismatch));
  if (host) {
    size_t total = 0;
    for (size_t s : sizes) total += s;
    RETURN_IF_ERROR(EnsureScratch(payload_recv_, total));
    size_t offset = 0;
    for (size_t j = 0; j < expect.size(); ++j) {
      expect[j].data = At(payload_recv_.data, offset);
      offset += sizes[j];
    }
  }
  // Stage 2: only non-empty messages post an operation; both sides know which those are.
  std::vector<Op> ops;
  for (const DeviceSend& s : sends) {
    if (s.bytes > 0) ops.push_back(Op{rank_of_.at(s.peer), s.peer, const_cast<void*>(s.data), s.bytes, true});
  }
  for (size_t j = 0; j < expect.size(); ++j) {
    if (sizes[j] > 0)
      ops.push_back(Op{rank_of_.at(expect[j].peer), expect[j].peer, expect[j].data, sizes[j], false});
  }
  RETURN_IF_ERROR(RunGroup(ops, "payload", deadline));
  if (!mismatch.ok()) return mismatch;
  return sizes;
}

absl::StatusOr<std::vector<Message>> NcclTransport::Exchange(std::span<const OutgoingMessage> sends,
                                                             std::span<const ExpectedMessage> expect,
                                                             absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(CheckUsable());
  size_t total = 0;
  for (size_t i = 0; i < sends.size(); ++i) {
    if (sends[i].payload.size() > options_.max_message_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("sends[", i, "].payload: ", sends[i].payload.size(),
                                                     " bytes, more than max_message_bytes ",
                                                     options_.max_message_bytes));
    }
    total += sends[i].payload.size();
  }
  RETURN_IF_ERROR(EnsureScratch(payload_send_, total));
  std::vector<DeviceSend> staged;
  size_t offset = 0;
  for (const OutgoingMessage& m : sends) {
    std::byte* at = At(payload_send_.data, offset);
    if (!m.payload.empty()) RETURN_IF_ERROR(api_->CopyToBuffer(at, m.payload.data(), m.payload.size()));
    staged.push_back(DeviceSend{m.peer, m.tag, at, m.payload.size()});
    offset += m.payload.size();
  }
  std::vector<DeviceReceive> receives;
  for (const ExpectedMessage& e : expect) {
    receives.push_back(DeviceReceive{e.peer, e.tag, nullptr, options_.max_message_bytes, e.any_step});
  }
  ASSIGN_OR_RETURN(std::vector<size_t> sizes, RoundLocked(staged, receives, /*host=*/true, deadline));
  std::vector<Message> out(expect.size());
  for (size_t j = 0; j < expect.size(); ++j) {
    out[j].tag = receives[j].tag;  // with any_step, the tag that arrived
    out[j].payload.resize(sizes[j]);
    if (sizes[j] > 0)
      RETURN_IF_ERROR(api_->CopyFromBuffer(out[j].payload.data(), receives[j].data, sizes[j]));
  }
  return out;
}

absl::StatusOr<std::vector<size_t>> NcclTransport::ExchangeDevice(std::span<const DeviceSend> sends,
                                                                  std::span<const DeviceReceive> expect,
                                                                  absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  std::vector<DeviceReceive> receives(expect.begin(), expect.end());
  return RoundLocked(sends, receives, /*host=*/false, deadline);
}

absl::Status NcclTransport::Send(int32_t peer, const MessageTag& tag, std::span<const std::byte> payload) {
  {
    absl::MutexLock lock(&mu_);
    // The seam's contract: an unknown peer is UNAVAILABLE (Exchange says INVALID_ARGUMENT).
    if (comm_ != nullptr && !rank_of_.contains(peer)) {
      return absl::UnavailableError(
          absl::StrCat("peer ", peer, " is not in the NCCL communicator (peers ", PeersText(), ")"));
    }
  }
  const OutgoingMessage message{peer, tag, payload};
  return AsSeamStatus(Exchange(std::span(&message, 1), {}, absl::Now() + options_.send_timeout).status());
}

absl::StatusOr<Message> NcclTransport::ReceiveAny(absl::Time /*deadline*/) {
  return absl::UnimplementedError(
      "NCCL cannot receive from whichever peer sends first: use ReceiveTagged or Exchange with the round's "
      "senders");
}

absl::StatusOr<Message> NcclTransport::ReceiveTagged(const MessageTag& tag, absl::Time deadline) {
  const ExpectedMessage expected{tag.sender, tag};
  auto messages = Exchange({}, std::span(&expected, 1), deadline);
  if (!messages.ok()) return AsSeamStatus(messages.status());
  return std::move((*messages)[0]);
}

absl::StatusOr<Message> NcclTransport::ReceiveFrom(int32_t peer, MessageKind kind, absl::Time deadline) {
  ExpectedMessage expected{peer, MessageTag{}, /*any_step=*/true};
  expected.tag.kind = kind;
  expected.tag.sender = peer;
  auto messages = Exchange({}, std::span(&expected, 1), deadline);
  if (!messages.ok()) return AsSeamStatus(messages.status());
  return std::move((*messages)[0]);
}

void NcclTransport::Interrupt(uint64_t generation) {
  uint64_t current = interrupt_below_.load();
  while (current < generation && !interrupt_below_.compare_exchange_weak(current, generation)) {
  }
}

void NcclTransport::Abort(uint64_t generation, std::string why) {
  if (generation == 0) return;
  {
    absl::MutexLock lock(&abort_mu_);
    if (generation < aborted_generation_) return;
    aborted_generation_ = generation;
    abort_why_ = why;
  }
  // A round in progress (which holds mu_) gives up at its next poll.
  Interrupt(generation + 1);
  if (mu_.TryLock()) {
    if (generation_ == generation) AbortLocked(absl::StrCat("aborted: ", why));
    mu_.Unlock();
  }
}

void NcclTransport::Shutdown() {
  shutdown_.store(true);
  absl::MutexLock lock(&mu_);  // a round in flight sees shutdown_ at its next poll and aborts
  AbortLocked("shut down");
}

}  // namespace moe::transport
