#include "services/router/attention_worker_pool.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/logging/logging.h"
#include "common/rpc/server.h"

namespace moe::router {

AttentionWorkerPool::AttentionWorkerPool(std::vector<std::string> attention_workers,
                                         std::vector<std::string> expert_workers,
                                         AttentionWorkerPoolOptions options, RouterMetrics* metrics)
    : options_(options), metrics_(metrics), queue_(options.max_queued_requests) {
  for (std::string& a : attention_workers)
    workers_.push_back(std::make_unique<AttentionClient>(std::move(a), options_.credentials));
  for (std::string& e : expert_workers)
    experts_.push_back(std::make_unique<HealthClient>(std::move(e), options_.credentials));
  state_.resize(workers_.size());
  expert_ready_.assign(experts_.size(), false);
  expert_check_in_flight_.assign(experts_.size(), false);
}

AttentionWorkerPool::~AttentionWorkerPool() {
  Stop();
}

void AttentionWorkerPool::Start(std::function<void(bool)> on_ready_change) {
  on_ready_change_ = std::move(on_ready_change);
  thread_ = std::thread([this] { Loop(); });
}

void AttentionWorkerPool::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  // Outstanding load polls reference `this`: wait for their callbacks (each has a deadline).
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (polls_in_flight_ > 0) return false;
    return std::none_of(expert_check_in_flight_.begin(), expert_check_in_flight_.end(),
                        [](bool b) { return b; });
  };
  mu_.Await(absl::Condition(&idle));
}

bool AttentionWorkerPool::ready() const {
  absl::MutexLock lock(&mu_);
  return NumReadyLocked() > 0;
}

size_t AttentionWorkerPool::queued() const {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

AttentionClient& AttentionWorkerPool::worker(size_t index) {
  absl::MutexLock lock(&mu_);
  return *workers_[index];  // the client itself never moves or goes away
}

size_t AttentionWorkerPool::num_workers() const {
  absl::MutexLock lock(&mu_);
  return static_cast<size_t>(
      std::count_if(state_.begin(), state_.end(), [](const Worker& w) { return !w.removed; }));
}

size_t AttentionWorkerPool::num_ready_workers() const {
  absl::MutexLock lock(&mu_);
  return static_cast<size_t>(NumReadyLocked());
}

std::vector<std::string> AttentionWorkerPool::attention_workers() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (size_t i = 0; i < workers_.size(); ++i) {
    if (!state_[i].removed) out.push_back(workers_[i]->address());
  }
  return out;
}

absl::Status AttentionWorkerPool::SetAttentionWorkers(const std::vector<std::string>& addresses,
                                                      const std::string& source) {
  absl::flat_hash_set<std::string> wanted;
  for (const std::string& a : addresses) {
    // ValidateHostPort names a flag ("--" + its argument).
    if (absl::Status s = rpc::ValidateHostPort(std::string(absl::StripPrefix(source, "--")), a); !s.ok())
      return s;
    wanted.insert(a);
  }
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  absl::flat_hash_set<std::string> present;
  for (size_t i = 0; i < workers_.size(); ++i) {
    Worker& w = state_[i];
    const std::string& address = workers_[i]->address();
    const bool keep = wanted.contains(address) && !present.contains(address);
    if (keep) present.insert(address);
    if (keep && w.removed) {
      // Back again: a poll issued before now says nothing about the process there now.
      w.removed = false;
      w.failed_at = now;
      w.view.ready = false;
      LOG(INFO) << "attention worker " << address << " added again (" << source << ")";
    } else if (!keep && !w.removed) {
      w.removed = true;
      w.view.ready = false;
      LOG(INFO) << "attention worker " << address << " removed (" << source
                << "): no new requests go to it; its open streams finish there or migrate when it stops";
    }
  }
  for (const std::string& a : addresses) {
    if (present.contains(a)) continue;
    present.insert(a);
    workers_.push_back(std::make_unique<AttentionClient>(a, options_.credentials));
    state_.emplace_back();
    state_.back().failed_at = now;
    LOG(INFO) << "attention worker " << a << " added (" << source << "): requests go to it once it is ready";
  }
  kicked_ = true;
  next_poll_ = absl::InfinitePast();  // poll the new ones now
  return absl::OkStatus();
}

int AttentionWorkerPool::NumReadyLocked() const {
  int n = 0;
  for (const Worker& w : state_) n += w.view.ready ? 1 : 0;
  return n;
}

absl::Status AttentionWorkerPool::Submit(std::shared_ptr<PendingRequest> request, std::string* reason) {
  absl::MutexLock lock(&mu_);
  std::vector<WorkerView> views;
  for (const Worker& w : state_) views.push_back(w.view);
  if (stopping_ || NumReadyLocked() == 0) {
    *reason = "no_workers";
    return absl::UnavailableError("no attention worker is ready");
  }
  if (!FitsSomeWorker(views, request->max_tokens())) {
    *reason = "kv_capacity";
    return absl::ResourceExhaustedError(absl::StrCat(
        "the request may need ", request->max_tokens(),
        " tokens of KV cache, more than any ready attention worker has; lower sampling.max_new_tokens"));
  }
  if (!queue_.Push(std::move(request))) {
    *reason = "queue_full";
    return absl::ResourceExhaustedError(
        absl::StrCat("the router queue is full (", queue_.max_size(), " requests waiting)"));
  }
  metrics_->waiting().Set(static_cast<double>(queue_.size()));
  kicked_ = true;
  return absl::OkStatus();
}

bool AttentionWorkerPool::Cancel(const PendingRequest* request) {
  absl::MutexLock lock(&mu_);
  const bool removed = queue_.Remove(request);
  metrics_->waiting().Set(static_cast<double>(queue_.size()));
  return removed;
}

void AttentionWorkerPool::IssuePolls(absl::Time now) {
  for (size_t i = 0; i < workers_.size(); ++i) {
    if (state_[i].removed) continue;
    if (state_[i].poll_in_flight) continue;  // a hung worker: its deadline will answer
    state_[i].poll_in_flight = true;
    ++polls_in_flight_;
    workers_[i]->GetLoad(options_.load_timeout,
                         [this, i, now](const grpc::Status& status, const moe::v1::WorkerLoad& load) {
                           OnLoad(i, now, status, load);
                         });
  }
  for (size_t i = 0; i < experts_.size(); ++i) {
    if (expert_check_in_flight_[i]) continue;
    expert_check_in_flight_[i] = true;
    experts_[i]->CheckReadiness(options_.load_timeout, [this, i](bool serving) {
      absl::MutexLock lock(&mu_);
      expert_ready_[i] = serving;
      expert_check_in_flight_[i] = false;
    });
  }
}

bool AttentionWorkerPool::AnotherWorkerReady(size_t index) const {
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < state_.size(); ++i) {
    if (i != index && state_[i].view.ready) return true;
  }
  return false;
}

void AttentionWorkerPool::ReportFailure(size_t index) {
  absl::MutexLock lock(&mu_);
  Worker& w = state_[index];
  w.failed_at = absl::Now();
  w.view.ready = false;
  kicked_ = true;
}

void AttentionWorkerPool::OnLoad(size_t index, absl::Time issued, const grpc::Status& status,
                                 const moe::v1::WorkerLoad& load) {
  absl::MutexLock lock(&mu_);
  Worker& w = state_[index];
  w.poll_in_flight = false;
  --polls_in_flight_;
  // A poll issued before a reported failure says nothing about the worker after it.
  w.view.ready = status.ok() && load.ready() && issued > w.failed_at && !w.removed;
  if (status.ok()) {
    w.view.num_kv_blocks = load.num_kv_blocks();
    w.view.num_free_kv_blocks = load.num_free_kv_blocks();
    w.view.kv_block_size = load.kv_block_size();
    // The answer includes every request placed before the poll was issued.
    std::erase_if(w.reservations, [&](const Reservation& r) { return r.placed < issued; });
  }
  w.view.reserved_kv_blocks = 0;
  for (const Reservation& r : w.reservations) w.view.reserved_kv_blocks += r.blocks;
  kicked_ = true;
}

void AttentionWorkerPool::UpdateMetrics(absl::Time now) {
  const int ready_attention = NumReadyLocked();
  const int ready_experts = static_cast<int>(std::count(expert_ready_.begin(), expert_ready_.end(), true));
  const auto current =
      std::count_if(state_.begin(), state_.end(), [](const Worker& w) { return !w.removed; });
  metrics_->SetWorkers("attention_worker", ready_attention, static_cast<int>(current));
  metrics_->SetWorkers("expert_worker", ready_experts, static_cast<int>(experts_.size()));
  metrics_->waiting().Set(static_cast<double>(queue_.size()));
}

void AttentionWorkerPool::Loop() {
  std::optional<bool> reported_ready;
  while (true) {
    std::vector<std::shared_ptr<PendingRequest>> expired;
    std::vector<std::pair<std::shared_ptr<PendingRequest>, std::pair<size_t, uint64_t>>> placed;
    bool ready = false;
    {
      absl::MutexLock lock(&mu_);
      auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return kicked_ || stopping_; };
      mu_.AwaitWithDeadline(absl::Condition(&wake), std::max(next_poll_, absl::Now()));
      kicked_ = false;
      const absl::Time now = absl::Now();
      if (stopping_) {
        while (!queue_.empty()) expired.push_back(queue_.PopFront());
      } else {
        if (now >= next_poll_) {
          IssuePolls(now);
          next_poll_ = now + options_.poll_interval;
          UpdateMetrics(now);
        }
        expired = queue_.PopExpired(now);
        // FIFO: the oldest request goes first; if it fits nowhere now, everyone behind it waits.
        while (!queue_.empty()) {
          std::vector<WorkerView> views;
          for (const Worker& w : state_) views.push_back(w.view);
          const std::optional<size_t> pick = PickWorker(views, queue_.front()->max_tokens());
          if (!pick.has_value()) break;
          Worker& w = state_[*pick];
          const int64_t blocks = KvBlocksNeeded(queue_.front()->max_tokens(), w.view.kv_block_size);
          const uint64_t id = next_reservation_++;
          w.reservations.push_back({id, now, blocks});
          w.view.reserved_kv_blocks += blocks;
          placed.push_back({queue_.PopFront(), {*pick, id}});
        }
        metrics_->waiting().Set(static_cast<double>(queue_.size()));
      }
      ready = NumReadyLocked() > 0 && !stopping_;
    }
    for (auto& r : expired) r->OnExpired();
    for (auto& [request, where] : placed) {
      if (request->OnPlaced(where.first)) continue;
      absl::MutexLock lock(&mu_);
      Worker& w = state_[where.first];
      std::erase_if(w.reservations, [&](const Reservation& r) { return r.id == where.second; });
      w.view.reserved_kv_blocks = 0;
      for (const Reservation& r : w.reservations) w.view.reserved_kv_blocks += r.blocks;
    }
    if (on_ready_change_ && reported_ready != ready) {
      reported_ready = ready;
      on_ready_change_(ready);
    }
    absl::MutexLock lock(&mu_);
    if (stopping_ && queue_.empty()) return;
  }
}

}  // namespace moe::router
