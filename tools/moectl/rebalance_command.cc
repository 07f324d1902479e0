// moectl cluster rebalance: runs the expert load balancer's planner for a cluster and applies its plan
// (docs/operations.md#rebalancing-experts, docs/architecture.md#expert-load-balancer).
//
//   moectl cluster rebalance [--state-dir D] [--window S] [--dry-run]
//   moectl cluster rebalance --attention-workers A,.. --expert-workers E,.. (--tls-ca/--tls-cert/--tls-key
//                            | --insecure) [--window S] [--dry-run]
//   ... --watch [--interval S] [--min-ratio R]
//
// Asks every expert worker for its info (rank, shard, extra experts, budget; GetInfo): one that does
// not answer, is draining, or is past the attention workers' placement is left out of the plan with a
// note, unless its shard then has no live home copy (an error). Reads every attention worker's
// per-expert row totals (WorkerLoad) twice, --window seconds apart; one that does not answer either
// read within 10 s (listed but not running, e.g. past an autoscaled StatefulSet's current size) is
// left out of the look with a note, and gets the placement at a later look once it answers (none
// answering is an error); plans with PlanExpertReplicas
// from the rows of the window, within each worker's budget / expert bytes extra experts (a joined
// worker keeps its own shard as copies); prints the measured load ratio, the plan and the predicted
// ratio before and after; and, unless --dry-run, applies it: LoadExtraExperts with the union of the
// old and new extra sets on every expert worker in the plan, SetExpertPlacement on every attention
// worker, then LoadExtraExperts with the new sets only to free the old copies. When the union does
// not fit a worker's budget, the attention workers first switch to the home shards (one version),
// the expert workers load the new sets, and the attention workers switch to the plan (the next
// version). No request waits or fails for any of it.
//
// --watch does that every --interval seconds until SIGINT/SIGTERM (exit 0), printing one line per
// look, and applies when the measured ratio is above --min-ratio or the cluster differs from what it
// last applied (an expert worker came, went or lost its copies; an attention worker uses another
// placement version: one that came since, on the home shards, does). A look that fails is printed
// and the next one comes after a backoff.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/engine/expert_balancer.h"
#include "common/engine/expert_placement.h"
#include "common/rpc/tls.h"
#include "common/status/status_macros.h"
#include "grpcpp/grpcpp.h"
#include "moe/v1/attention.grpc.pb.h"
#include "moe/v1/expert_control.grpc.pb.h"
#include "tools/moectl/commands.h"

namespace moe::moectl {

absl::StatusOr<int64_t> ParseByteSize(const std::string& text) {
  std::string s(absl::StripAsciiWhitespace(text));
  double scale = 1;
  for (const auto& [suffix, factor] : {std::pair<const char*, double>{"KiB", 1024.0},
                                       {"MiB", 1024.0 * 1024},
                                       {"GiB", 1024.0 * 1024 * 1024}}) {
    if (s.size() > 3 && s.ends_with(suffix)) {
      s = std::string(absl::StripAsciiWhitespace(s.substr(0, s.size() - 3)));
      scale = factor;
      break;
    }
  }
  double number = 0;
  if (!absl::SimpleAtod(s, &number) || !std::isfinite(number) || number < 0 || number * scale > 9e18) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", text, "\" is not a byte size (BYTES, or a number with KiB, MiB or GiB, >= 0)"));
  }
  return static_cast<int64_t>(number * scale);
}

namespace {

namespace fs = std::filesystem;

constexpr char kCommand[] = "cluster rebalance";

struct RebalanceFlags {
  std::string state_dir;
  std::string attention_workers;  // comma-separated addresses (with expert_workers: any cluster)
  std::string expert_workers;
  rpc::TlsOptions tls;
  double window_s = 10;
  double timeout_s = 120;  // per RPC
  bool dry_run = false;
  bool watch = false;
  double interval_s = 30;  // --watch: seconds from one look's start to the next
  double min_ratio = 1.1;  // --watch: apply when the measured ratio is above this
};

std::atomic<bool> stop_requested{false};
void OnStopSignal(int) {
  stop_requested = true;
}

// Sleeps `seconds`; false (at once) when SIGINT/SIGTERM came.
bool SleepUnlessStopped(double seconds) {
  const auto until =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  while (std::chrono::steady_clock::now() < until) {
    if (stop_requested) return false;
    std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(
        std::chrono::milliseconds(50), until - std::chrono::steady_clock::now()));
  }
  return !stop_requested;
}

std::vector<std::string> ReadAddressFile(const fs::path& path) {
  std::vector<std::string> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    line = std::string(absl::StripAsciiWhitespace(line));
    if (!line.empty() && line[0] != '#') out.push_back(line);
  }
  return out;
}

std::vector<std::string> SplitAddresses(const std::string& list) {
  std::vector<std::string> out;
  for (absl::string_view a : absl::StrSplit(list, ',', absl::SkipWhitespace()))
    out.emplace_back(absl::StripAsciiWhitespace(a));
  return out;
}

std::string RpcError(const std::string& what, const grpc::Status& status) {
  return absl::StrCat(what, ": ",
                      absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())), ": ",
                      status.error_message());
}

// Where the cluster is: the state dir of a local cluster (its files are read again at every look:
// `cluster scale` rewrites them) or the addresses given, and the credentials to dial them.
struct Target {
  std::optional<fs::path> state;
  std::vector<std::string> attention, experts;  // given on the command line
  rpc::ClientCredentials credentials;
};

Target Resolve(const RebalanceFlags& flags) {
  Target target;
  rpc::TlsOptions tls = flags.tls;
  if (!flags.attention_workers.empty() || !flags.expert_workers.empty()) {
    if (flags.attention_workers.empty() || flags.expert_workers.empty())
      Fail(kCommand, "give both --attention-workers and --expert-workers (or neither: the local cluster)");
    target.attention = SplitAddresses(flags.attention_workers);
    target.experts = SplitAddresses(flags.expert_workers);
    if (target.attention.empty()) Fail(kCommand, "--attention-workers: no addresses");
    if (target.experts.empty()) Fail(kCommand, "--expert-workers: no addresses");
  } else {
    const char* runtime = std::getenv("XDG_RUNTIME_DIR");
    const fs::path state = !flags.state_dir.empty()
                               ? fs::path(flags.state_dir)
                               : fs::path(std::string(runtime && *runtime ? runtime : "/tmp") +
                                          "/moectl-cluster-" + std::to_string(getuid()));
    if (!fs::exists(state / "supervisor.pid") || !fs::exists(state / "expert_workers")) {
      Fail(kCommand, "no cluster is running in " + state.string() +
                         " (start one with `moectl cluster up`, or give --attention-workers and "
                         "--expert-workers with the cluster's credentials)");
    }
    target.state = state;
    std::ifstream mode_file(state / "tls_mode");
    std::string mode;
    mode_file >> mode;
    if (tls.ca_file.empty() && tls.cert_file.empty() && tls.key_file.empty() && !tls.insecure) {
      if (mode == "insecure") {
        tls.insecure = true;
      } else {
        tls.ca_file = (state / "tls" / "ca.crt").string();  // the operator's certificate
        tls.cert_file = (state / "tls" / "tls.crt").string();
        tls.key_file = (state / "tls" / "tls.key").string();
      }
    }
  }
  absl::StatusOr<rpc::ClientCredentials> credentials = rpc::MakeClientCredentials(tls);
  if (!credentials.ok()) {
    Fail(kCommand, absl::StrCat("the cluster's credentials (--tls-ca, --tls-cert and --tls-key: an operator "
                                "certificate, or --insecure): ",
                                credentials.status().message()));
  }
  target.credentials = *credentials;
  return target;
}

std::chrono::system_clock::time_point Deadline(double seconds) {
  return std::chrono::system_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

struct Cluster {
  std::vector<std::string> attention;
  std::vector<std::string> experts;  // by rank: the home workers, then the joined ones
  rpc::ClientCredentials credentials;
};

absl::StatusOr<Cluster> Addresses(const Target& target) {
  Cluster cluster{target.attention, target.experts, target.credentials};
  if (target.state.has_value()) {
    cluster.attention = ReadAddressFile(*target.state / "attention_workers");
    cluster.experts = ReadAddressFile(*target.state / "expert_workers");
    if (cluster.attention.empty() || cluster.experts.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("no ", cluster.attention.empty() ? "attention" : "expert", " workers listed in ",
                       target.state->string(), " (is the cluster still running?)"));
    }
  }
  return cluster;
}

// The loads of the attention workers at `addresses` that answer GetLoad within `timeout_s`, validated:
// per-expert totals of one size everywhere and per-worker totals of one size (the attention workers'
// placement's expert workers, home and joinable). One that does not answer (not there yet, gone, or
// hung) is left out with a note: it gets the placement at a later look, once it answers.
struct AttentionLoads {
  std::vector<std::string> addresses;  // the ones that answered, in the order given
  std::vector<v1::WorkerLoad> loads;   // theirs, in the same order
  std::vector<std::string> left_out;   // "attention worker A: GetLoad: ..."
};

// One attention worker's GetLoad, within `timeout_s`.
grpc::Status GetLoad(const Cluster& cluster, const std::string& address, double timeout_s,
                     v1::WorkerLoad* load) {
  auto stub = v1::AttentionWorker::NewStub(cluster.credentials.CreateChannel(address));
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(timeout_s));
  return stub->GetLoad(&ctx, v1::GetLoadRequest(), load);
}

absl::StatusOr<AttentionLoads> ReadLoads(const Cluster& cluster, const std::vector<std::string>& addresses,
                                         double timeout_s) {
  AttentionLoads out;
  for (const std::string& address : addresses) {
    v1::WorkerLoad load;
    const grpc::Status status = GetLoad(cluster, address, timeout_s, &load);
    if (!status.ok()) {
      out.left_out.push_back(RpcError("attention worker " + address + ": GetLoad", status));
      continue;
    }
    for (size_t i = 0; i < out.loads.size(); ++i) {
      const v1::WorkerLoad& other = out.loads[i];
      if (load.expert_rows_total_size() != 0 && other.expert_rows_total_size() != 0 &&
          load.expert_rows_total_size() != other.expert_rows_total_size()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "attention worker ", address, ": expert_rows_total has ", load.expert_rows_total_size(),
            " experts, ", out.addresses[i], " has ", other.expert_rows_total_size()));
      }
      if (load.expert_worker_rows_total_size() != 0 && other.expert_worker_rows_total_size() != 0 &&
          load.expert_worker_rows_total_size() != other.expert_worker_rows_total_size()) {
        return absl::FailedPreconditionError(
            absl::StrCat("attention worker ", address, " places on ", load.expert_worker_rows_total_size(),
                         " expert workers, ", out.addresses[i], " on ", other.expert_worker_rows_total_size(),
                         " (are they part of one cluster?)"));
      }
    }
    out.addresses.push_back(address);
    out.loads.push_back(std::move(load));
  }
  if (out.addresses.empty()) {
    return absl::UnavailableError(
        absl::StrCat("no attention worker answers GetLoad (", absl::StrJoin(out.left_out, "; "), ")"));
  }
  return out;
}

absl::StatusOr<v1::ExpertWorkerInfo> GetExpertInfo(const Cluster& cluster, const std::string& address,
                                                   double timeout_s) {
  auto stub = v1::ExpertControl::NewStub(cluster.credentials.CreateChannel(address));
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(timeout_s));
  v1::ExpertWorkerInfo info;
  const grpc::Status status = stub->GetInfo(&ctx, v1::GetInfoRequest(), &info);
  if (!status.ok()) return absl::UnavailableError(RpcError("GetInfo", status));
  return info;
}

// What a look reports when another writer (`moectl cluster scale`, another balancer) changed the
// placement or an expert worker's extra set since the look read it: ABORTED, nothing of the other
// writer's undone; the next look (or a rerun) plans from the new state.
absl::Status Aborted(const std::string& what, const grpc::Status& status) {
  return absl::AbortedError(absl::StrCat(RpcError(what, status),
                                         "; another writer changed it since this look read it: stopped "
                                         "there, look again"));
}

// LoadExtraExperts, a compare-and-set on the worker's version: `replaces` is the version this look
// read from it (GetInfo) or last loaded there itself. ABORTED when another writer loaded since.
absl::Status LoadExtras(const Cluster& cluster, const std::string& address, uint64_t version,
                        const std::vector<int64_t>& experts, uint64_t replaces, double timeout_s) {
  auto stub = v1::ExpertControl::NewStub(cluster.credentials.CreateChannel(address));
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(timeout_s));
  v1::LoadExtraExpertsRequest request;
  request.set_placement_version(version);
  request.set_replaces_version(replaces);
  for (int64_t e : experts) request.add_experts(static_cast<int32_t>(e));
  v1::LoadExtraExpertsResponse response;
  const grpc::Status status = stub->LoadExtraExperts(&ctx, request, &response);
  const std::string what = absl::StrCat("LoadExtraExperts(version ", version, ", experts [",
                                        absl::StrJoin(experts, ","), "]) on expert worker ", address);
  if (status.error_code() == grpc::StatusCode::ABORTED) return Aborted(what, status);
  if (!status.ok()) return absl::UnavailableError(RpcError(what, status));
  return absl::OkStatus();
}

// Confirms, before copies are freed, that no attention worker may still dispatch with a placement
// other than `version`: every listed one that answers GetLoad uses `version` or version 0 (the home
// shards as started: no extra copies), and every other one is not running (UNAVAILABLE: nothing
// listens). One that answers late (hung) or with another version may still name the copies:
// FAILED_PRECONDITION saying which, and the caller keeps them.
absl::Status AllAttentionWorkersOn(const std::vector<std::string>& listed, const Cluster& cluster,
                                   uint64_t version, double timeout_s) {
  for (const std::string& address : listed) {
    v1::WorkerLoad load;
    const grpc::Status status = GetLoad(cluster, address, timeout_s, &load);
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE) continue;  // not running: no placement
    if (!status.ok()) {
      return absl::FailedPreconditionError(RpcError(
          "attention worker " + address + ": GetLoad (it may still use an older placement)", status));
    }
    if (load.expert_placement_version() != version && load.expert_placement_version() != 0) {
      return absl::FailedPreconditionError(absl::StrCat("attention worker ", address,
                                                        " uses placement version ",
                                                        load.expert_placement_version(), ", not ", version));
    }
  }
  return absl::OkStatus();
}

// SetExpertPlacement on every attention worker of `cluster`, in order, each a compare-and-set on the
// version this look read from it (`replaces`, by the same index). ABORTED at the first that another
// writer switched since; the ones before keep the new placement (the next look sees them).
absl::Status SetPlacement(const Cluster& cluster, const engine::ExpertPlacement& placement,
                          const std::vector<uint64_t>& replaces, double timeout_s) {
  v1::SetExpertPlacementRequest request;
  request.set_placement_version(placement.version());
  for (int64_t e = 0; e < placement.num_experts(); ++e) {
    for (int64_t w : placement.extra_workers(e)) {
      v1::ExtraExpertCopy* copy = request.add_extras();
      copy->set_expert(static_cast<int32_t>(e));
      copy->set_worker(static_cast<int32_t>(w));
    }
  }
  for (size_t a = 0; a < cluster.attention.size(); ++a) {
    const std::string& address = cluster.attention[a];
    auto stub = v1::AttentionWorker::NewStub(cluster.credentials.CreateChannel(address));
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(timeout_s));
    request.set_replaces_version(replaces[a]);
    v1::SetExpertPlacementResponse response;
    const grpc::Status status = stub->SetExpertPlacement(&ctx, request, &response);
    const std::string what = absl::StrCat("SetExpertPlacement(version ", placement.version(), ", replacing ",
                                          replaces[a], ") on attention worker ", address);
    if (status.error_code() == grpc::StatusCode::ABORTED) return Aborted(what, status);
    if (!status.ok()) return absl::UnavailableError(RpcError(what, status));
  }
  return absl::OkStatus();
}

// What the last plan applied by --watch left, to tell at the next look whether the cluster changed.
struct Applied {
  uint64_t version = 0;
  std::map<int64_t, std::string> workers;           // the expert workers in the plan: rank -> address
  std::map<int64_t, std::vector<int64_t>> loaded;   // rank -> its LoadExtraExperts set
  std::vector<std::pair<int64_t, int64_t>> extras;  // the placement's (expert, worker) copies
  std::optional<engine::ExpertPlacement> placement;
};

// A plan must beat the one in use by this much (predicted max/mean, on the same window) to replace it
// when nothing else changed: windows differ a little, and a plan that is only as good is churn.
constexpr double kMinGain = 0.02;

std::vector<std::pair<int64_t, int64_t>> ExtrasOf(const engine::ExpertPlacement& placement) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t e = 0; e < placement.num_experts(); ++e)
    for (int64_t w : placement.extra_workers(e)) out.emplace_back(e, w);
  return out;
}

// One look at the cluster: measure, plan, and apply when `watch` is null (one-shot) or when the
// measured ratio or a change since *watch says so. One-shot prints the details; the returned line is
// the look's summary (what --watch prints).
absl::StatusOr<std::string> Look(const RebalanceFlags& flags, const Target& target,
                                 std::optional<Applied>* watch) {
  ASSIGN_OR_RETURN(Cluster cluster, Addresses(target));
  const double info_timeout_s = std::min(flags.timeout_s, 10.0);
  const int64_t listed = static_cast<int64_t>(cluster.experts.size());

  // Expert workers, by rank: address i must be rank i. One that does not answer is left out.
  std::vector<std::optional<v1::ExpertWorkerInfo>> infos(static_cast<size_t>(listed));
  std::vector<std::string> why_out(static_cast<size_t>(listed));  // empty: in the plan
  int64_t home = -1, replicas = -1;
  int64_t first_answering = -1;
  for (int64_t i = 0; i < listed; ++i) {
    const std::string& address = cluster.experts[static_cast<size_t>(i)];
    absl::StatusOr<v1::ExpertWorkerInfo> info = GetExpertInfo(cluster, address, info_timeout_s);
    if (!info.ok()) {
      why_out[static_cast<size_t>(i)] = std::string(info.status().message());
      continue;
    }
    if (info->rank() != static_cast<int32_t>(i)) {
      return absl::InvalidArgumentError(absl::StrCat("--expert-workers: ", address, " is expert worker ",
                                                     info->rank(), " of ", info->num_expert_workers(),
                                                     "; give the expert workers' addresses in rank order"));
    }
    if (first_answering < 0) {
      first_answering = i;
      home = info->num_expert_workers();
      replicas = info->expert_replicas();
    } else if (info->num_expert_workers() != home || info->expert_replicas() != replicas) {
      return absl::FailedPreconditionError(absl::StrCat(
          "expert worker ", address, " has ", info->num_expert_workers(),
          " home workers and expert_replicas ", info->expert_replicas(), ", ",
          cluster.experts[static_cast<size_t>(first_answering)], " has ", home, " and ", replicas));
    }
    if (info->draining()) why_out[static_cast<size_t>(i)] = "draining";
    infos[static_cast<size_t>(i)] = *std::move(info);
  }
  if (first_answering < 0) {
    return absl::UnavailableError(absl::StrCat("no expert worker answers GetInfo (", cluster.experts.front(),
                                               ": ", why_out.front(), ")"));
  }
  if (listed < home) {
    return absl::InvalidArgumentError(absl::StrCat("--expert-workers: ", listed, " addresses for ", home,
                                                   " home expert workers; give all their addresses in rank "
                                                   "order (then any joined ones)"));
  }

  auto name = [&](int64_t w) {
    return absl::StrCat("expert-", w, " (", cluster.experts[static_cast<size_t>(w)], ")");
  };
  // Every shard needs a home copy that answers: its experts have no other host the attention workers
  // rely on.
  if (replicas < 1 || home < replicas || home % replicas != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("the expert workers say ", home, " home workers in ", replicas, " replicas"));
  }
  const int64_t shards = home / replicas;
  for (int64_t s = 0; s < shards; ++s) {
    std::vector<std::string> out;
    bool covered = false;
    for (int64_t w = s; w < home; w += shards) {
      if (why_out[static_cast<size_t>(w)].empty()) {
        covered = true;
      } else {
        out.push_back(absl::StrCat(name(w), ": ", why_out[static_cast<size_t>(w)]));
      }
    }
    if (!covered) {
      return absl::UnavailableError(
          absl::StrCat("shard ", s, "'s home experts have no live host: ", absl::StrJoin(out, "; ")));
    }
  }
  // Some worker in the plan must have room for an extra expert.
  {
    bool any_budget = false;
    std::string budgets;
    int64_t expert_bytes = 0;
    for (int64_t w = 0; w < listed; ++w) {
      if (!why_out[static_cast<size_t>(w)].empty()) continue;
      const v1::ExpertWorkerInfo& info = *infos[static_cast<size_t>(w)];
      expert_bytes = info.expert_bytes();
      any_budget =
          any_budget || (info.expert_bytes() > 0 && info.extra_expert_budget_bytes() >= info.expert_bytes());
      absl::StrAppend(&budgets, budgets.empty() ? "" : ", ", "expert-", w, " ",
                      info.extra_expert_budget_bytes());
    }
    if (!any_budget) {
      return absl::FailedPreconditionError(absl::StrCat(
          "no expert worker can hold an extra expert: --extra-expert-budget is 0 (or below one expert, ",
          expert_bytes, " bytes) on every expert worker (budgets in bytes: ", budgets,
          "); start the cluster with `moectl cluster up --extra-expert-budget BYTES` (expert workers: "
          "--extra_expert_budget_bytes, Helm: expert.extraExpertBudgetBytes)"));
    }
  }

  // The window: two reads of the monotonic totals.
  // The window: two reads of the monotonic totals, of the attention workers that answer both. One that
  // does not answer (listed but not running yet, as the balancer of an autoscaled cluster lists them
  // all) is left out of this look with a note; it is read, and given the placement, once it answers.
  ASSIGN_OR_RETURN(const AttentionLoads read_first, ReadLoads(cluster, cluster.attention, info_timeout_s));
  if (!SleepUnlessStopped(flags.window_s)) return absl::CancelledError("stopped");
  ASSIGN_OR_RETURN(const AttentionLoads read_second,
                   ReadLoads(cluster, read_first.addresses, info_timeout_s));
  std::vector<std::string> attention_out = read_first.left_out;
  attention_out.insert(attention_out.end(), read_second.left_out.begin(), read_second.left_out.end());
  const std::vector<v1::WorkerLoad>& second = read_second.loads;
  std::vector<v1::WorkerLoad> first;  // the first read of each worker in `second`
  for (const std::string& address : read_second.addresses) {
    const size_t i =
        static_cast<size_t>(std::find(read_first.addresses.begin(), read_first.addresses.end(), address) -
                            read_first.addresses.begin());
    first.push_back(read_first.loads[i]);
  }
  // `cluster scale` writes the expert workers' file before it switches the placement: a look that saw
  // the switch but not the new list would plan with a worker that is leaving (or without one joining).
  {
    ASSIGN_OR_RETURN(const Cluster again, Addresses(target));
    if (again.experts != cluster.experts) {
      return absl::AbortedError(absl::StrCat("the expert workers changed during this look (",
                                             absl::StrJoin(cluster.experts, ","), " -> ",
                                             absl::StrJoin(again.experts, ","), "): look again"));
    }
  }
  // From here on the cluster's attention workers are the answering ones: the placement goes to them.
  cluster.attention = read_second.addresses;
  // The compare-and-set versions: what each of them uses now.
  std::vector<uint64_t> attention_versions;
  for (size_t a = 0; a < second.size(); ++a) {
    if (first[a].expert_placement_version() != second[a].expert_placement_version()) {
      return absl::AbortedError(
          absl::StrCat("attention worker ", cluster.attention[a], " switched from placement version ",
                       first[a].expert_placement_version(), " to ", second[a].expert_placement_version(),
                       " during the window (another writer): look again"));
    }
    attention_versions.push_back(second[a].expert_placement_version());
  }
  // The attention workers' placement: its expert workers (home and joinable) and version.
  int64_t placement_workers = 0;
  uint64_t current_version = 0;
  for (const std::optional<v1::ExpertWorkerInfo>& info : infos) {
    if (info.has_value()) current_version = std::max(current_version, info->placement_version());
  }
  std::vector<uint64_t> expert_rows;
  for (size_t a = 0; a < second.size(); ++a) {
    const v1::WorkerLoad& now = second[a];
    const v1::WorkerLoad& then = first[a];
    current_version = std::max(current_version, now.expert_placement_version());
    if (now.expert_rows_total_size() == 0) continue;  // no MoE step yet
    placement_workers = now.expert_worker_rows_total_size();
    if (expert_rows.empty()) expert_rows.assign(static_cast<size_t>(now.expert_rows_total_size()), 0);
    if (now.expert_rows_total_size() != static_cast<int>(expert_rows.size())) {
      return absl::FailedPreconditionError(
          absl::StrCat("attention worker ", cluster.attention[a], ": expert_rows_total has ",
                       now.expert_rows_total_size(), " experts, others ", expert_rows.size()));
    }
    const bool restarted = then.expert_rows_total_size() != now.expert_rows_total_size();
    for (int e = 0; e < now.expert_rows_total_size(); ++e) {
      const uint64_t before = restarted ? 0 : then.expert_rows_total(e);
      if (now.expert_rows_total(e) < before) {
        return absl::UnavailableError(absl::StrCat("attention worker ", cluster.attention[a],
                                                   " restarted during the window; look again"));
      }
      expert_rows[static_cast<size_t>(e)] += now.expert_rows_total(e) - before;
    }
  }
  uint64_t total_rows = 0;
  for (uint64_t rows : expert_rows) total_rows += rows;
  if (total_rows == 0) {
    const std::string none = absl::StrCat("no expert rows were routed in the ", flags.window_s,
                                          " s window (--window): nothing to plan from");
    if (watch != nullptr) return none + "; nothing to do";
    return absl::FailedPreconditionError(none + "; rebalance while requests run");
  }
  if (placement_workers < home) {
    return absl::FailedPreconditionError(absl::StrCat("the attention workers place on ", placement_workers,
                                                      " expert workers, the expert workers say there are ",
                                                      home, " (is it one cluster?)"));
  }
  // Left out besides those that do not answer: workers past the attention workers' placement.
  for (int64_t i = placement_workers; i < listed; ++i) {
    if (why_out[static_cast<size_t>(i)].empty()) {
      why_out[static_cast<size_t>(i)] =
          absl::StrCat("not in the attention workers' placement (", placement_workers,
                       " expert workers, home and joinable)");
    }
  }
  auto in_plan = [&](int64_t w) { return w < listed && why_out[static_cast<size_t>(w)].empty(); };
  const int64_t num_experts = static_cast<int64_t>(expert_rows.size());
  RETURN_IF_ERROR(engine::ExpertPlacement::Validate(num_experts, home, replicas));
  for (int64_t w = 0; w < listed; ++w) {
    if (!infos[static_cast<size_t>(w)].has_value()) continue;
    const v1::ExpertWorkerInfo& info = *infos[static_cast<size_t>(w)];
    const engine::ExpertRange range = engine::ExpertPlacement::RangeOf(num_experts, shards, w % shards);
    if (range.first != info.first_expert() || range.count != info.num_experts()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "expert worker ", cluster.experts[static_cast<size_t>(w)], " serves experts [", info.first_expert(),
          ", ", info.first_expert() + info.num_experts(), "), not the shard [", range.first, ", ",
          range.first + range.count, ") of ", num_experts, " experts: the workers disagree on the model"));
    }
  }

  // The attention workers' placement: home workers 0..home-1, joinable ones up to placement_workers.
  std::vector<int32_t> peers, joinable_peers;
  for (int64_t w = 0; w < placement_workers; ++w)
    (w < home ? peers : joinable_peers).push_back(engine::kFirstExpertPeerId + static_cast<int32_t>(w));
  ASSIGN_OR_RETURN(const engine::ExpertPlacement home_placement,
                   engine::ExpertPlacement(num_experts, peers, replicas).WithJoinableWorkers(joinable_peers));
  ASSIGN_OR_RETURN(const engine::ExpertPlacement base, home_placement.WithExtras({}, current_version));
  engine::BalanceConstraints constraints;
  constraints.available.assign(static_cast<size_t>(placement_workers), false);
  constraints.max_extras.assign(static_cast<size_t>(placement_workers), 0);
  std::vector<std::set<int64_t>> fixed(static_cast<size_t>(placement_workers));  // a joined worker's shard
  int64_t expert_bytes = 0;
  for (int64_t w = 0; w < placement_workers; ++w) {
    if (!in_plan(w)) continue;
    const v1::ExpertWorkerInfo& info = *infos[static_cast<size_t>(w)];
    expert_bytes = info.expert_bytes();
    constraints.available[static_cast<size_t>(w)] = true;
    const int64_t fit = info.expert_bytes() > 0 ? info.extra_expert_budget_bytes() / info.expert_bytes() : 0;
    constraints.max_extras[static_cast<size_t>(w)] = fit;
    if (w >= home) {
      for (int64_t e = info.first_expert(); e < info.first_expert() + info.num_experts(); ++e) {
        constraints.fixed.emplace_back(e, w);
        fixed[static_cast<size_t>(w)].insert(e);
      }
    }
  }
  ASSIGN_OR_RETURN(engine::BalancePlan plan, engine::PlanExpertReplicas(base, expert_rows, constraints));
  // What each worker in the plan must load (its plan copies but its own shard) and holds now.
  auto to_load = [&](int64_t w) {
    std::vector<int64_t> out;
    for (int64_t e : plan.placement.extra_experts(w))
      if (!fixed[static_cast<size_t>(w)].contains(e)) out.push_back(e);
    return out;
  };
  auto loaded_now = [&](int64_t w) {
    const v1::ExpertWorkerInfo& info = *infos[static_cast<size_t>(w)];
    return std::vector<int64_t>(info.extra_experts().begin(), info.extra_experts().end());
  };

  std::vector<double> measured;
  for (int64_t w = 0; w < placement_workers; ++w) {
    if (!in_plan(w)) continue;
    double rows = 0;
    for (size_t a = 0; a < second.size(); ++a) {
      const v1::WorkerLoad& now = second[a];
      const v1::WorkerLoad& then = first[a];
      if (w >= now.expert_worker_rows_total_size()) continue;
      const uint64_t before = then.expert_worker_rows_total_size() == now.expert_worker_rows_total_size()
                                  ? then.expert_worker_rows_total(static_cast<int>(w))
                                  : 0;
      if (now.expert_worker_rows_total(static_cast<int>(w)) >= before)
        rows += static_cast<double>(now.expert_worker_rows_total(static_cast<int>(w)) - before);
    }
    measured.push_back(rows);
  }
  const double ratio = engine::MaxMeanRatio(measured);
  std::vector<std::string> left_out = attention_out;
  for (int64_t w = 0; w < listed; ++w) {
    if (!in_plan(w)) left_out.push_back(absl::StrCat(name(w), ": ", why_out[static_cast<size_t>(w)]));
  }
  std::string line = absl::StrFormat("measured ratio %.3f (%d expert workers, %d rows in %.1f s)", ratio,
                                     measured.size(), total_rows, flags.window_s);
  if (!left_out.empty()) absl::StrAppend(&line, "; left out: ", absl::StrJoin(left_out, "; "));

  if (watch == nullptr) {
    for (const std::string& note : attention_out)
      std::cout << "note: left out (no placement until it answers): " << note << "\n";
    for (size_t i = attention_out.size(); i < left_out.size(); ++i)
      std::cout << "note: left out of the plan: " << left_out[i] << "\n";
    std::cout << absl::StrFormat("window: %.1f s, %d expert rows from %d attention workers\n", flags.window_s,
                                 total_rows, cluster.attention.size());
    std::cout << absl::StrFormat("measured load ratio (max/mean rows per expert worker): %.3f\n", ratio);
    std::cout << absl::StrFormat("plan: placement version %d, one expert: %d bytes\n",
                                 plan.placement.version(), expert_bytes);
    for (int64_t w = 0; w < listed; ++w) {
      std::cout << "  " << name(w) << ": ";
      if (!in_plan(w)) {
        std::cout << "left out\n";
        continue;
      }
      std::cout << "extra experts [" << absl::StrJoin(to_load(w), ",") << "] (now ["
                << absl::StrJoin(loaded_now(w), ",") << "]), at most "
                << constraints.max_extras[static_cast<size_t>(w)];
      if (w >= home)
        std::cout << " and its own shard's " << fixed[static_cast<size_t>(w)].size() << " as copies";
      std::cout << "\n";
    }
    std::cout << absl::StrFormat("predicted load ratio: %.3f -> %.3f\n", plan.ratio_before, plan.ratio_after)
              << std::flush;
    if (flags.dry_run) {
      std::cout << "dry run: nothing changed" << std::endl;
      return line + "; dry run";
    }
  } else {
    // Apply only when the load or the cluster says so.
    std::vector<std::string> changes;
    if (watch->has_value()) {
      const Applied& last = **watch;
      std::map<int64_t, std::string> workers;
      for (int64_t w = 0; w < placement_workers; ++w)
        if (in_plan(w)) workers[w] = cluster.experts[static_cast<size_t>(w)];
      if (workers != last.workers) changes.push_back("the expert workers changed");
      for (const auto& [w, address] : workers) {
        auto it = last.loaded.find(w);
        if (it != last.loaded.end() && loaded_now(w) != it->second)
          changes.push_back(absl::StrCat("expert-", w, " holds [", absl::StrJoin(loaded_now(w), ","),
                                         "], not [", absl::StrJoin(it->second, ","), "]"));
      }
      for (size_t a = 0; a < second.size(); ++a) {
        if (second[a].expert_placement_version() != last.version)
          changes.push_back(absl::StrCat("attention worker ", cluster.attention[a],
                                         " uses placement version ", second[a].expert_placement_version(),
                                         ", not ", last.version));
      }
    }
    const bool unbalanced = ratio > flags.min_ratio;
    if (changes.empty()) {
      if (!unbalanced) {
        // The first look of a watcher takes the cluster as it finds it as what to keep: the expert
        // workers in the plan, their loaded copies and the highest placement version in use.
        if (!watch->has_value()) {
          Applied found{.version = current_version};
          for (int64_t w = 0; w < placement_workers; ++w) {
            if (!in_plan(w)) continue;
            found.workers[w] = cluster.experts[static_cast<size_t>(w)];
            found.loaded[w] = loaded_now(w);
          }
          *watch = std::move(found);
        }
        return absl::StrFormat("%s; balanced (<= %.2f): nothing to do", line, flags.min_ratio);
      }
      if (watch->has_value() && (*watch)->placement.has_value() &&
          (*watch)->placement->num_workers() == placement_workers &&
          (*watch)->placement->num_experts() == num_experts) {
        const std::vector<double> loads =
            engine::ModelWorkerLoads(*(*watch)->placement, expert_rows, constraints.available);
        std::vector<double> in_use;
        for (int64_t w = 0; w < placement_workers; ++w)
          if (in_plan(w)) in_use.push_back(loads[static_cast<size_t>(w)]);
        const double predicted = engine::MaxMeanRatio(in_use);
        if (ExtrasOf(plan.placement) == (*watch)->extras || plan.ratio_after > predicted - kMinGain) {
          return absl::StrFormat(
              "%s; the plan in use is as good (predicted %.3f, a new one %.3f): nothing to do", line,
              predicted, plan.ratio_after);
        }
      }
    }
    absl::StrAppend(
        &line, "; ",
        changes.empty() ? absl::StrFormat("above %.2f", flags.min_ratio) : absl::StrJoin(changes, "; "));
    if (flags.dry_run) {
      return absl::StrFormat("%s; dry run: would apply placement version %d (predicted %.3f -> %.3f)", line,
                             plan.placement.version(), plan.ratio_before, plan.ratio_after);
    }
  }

  // Load before switching: no attention worker ever sends an expert to a worker not holding it.
  bool union_fits = true;
  std::map<int64_t, std::vector<int64_t>> unions;
  for (int64_t w = 0; w < placement_workers; ++w) {
    if (!in_plan(w)) continue;
    const v1::ExpertWorkerInfo& info = *infos[static_cast<size_t>(w)];
    std::set<int64_t> both(info.extra_experts().begin(), info.extra_experts().end());
    for (int64_t e : to_load(w)) both.insert(e);
    unions[w] = std::vector<int64_t>(both.begin(), both.end());
    if (static_cast<int64_t>(both.size()) * info.expert_bytes() > info.extra_expert_budget_bytes())
      union_fits = false;
  }
  const uint64_t version = plan.placement.version();
  engine::ExpertPlacement target_placement = plan.placement;
  // Every LoadExtraExperts and SetExpertPlacement below is a compare-and-set on the version this look
  // read (or last set itself), so a concurrent writer (`cluster scale`, another balancer) makes this
  // look stop with ABORTED instead of mixing placements or freeing copies the other one routes to.
  // An expert worker's version after this look's own loads: the version of the next compare-and-set.
  std::map<int64_t, uint64_t> expert_version;
  for (const auto& [w, experts] : unions)
    expert_version[w] = infos[static_cast<size_t>(w)]->placement_version();
  // Frees copies only once no attention worker may still use a placement naming them (see
  // AllAttentionWorkersOn); the attention workers listed now, not only the ones that answered the
  // look.
  auto safe_to_free = [&](uint64_t in_use) -> absl::Status {
    ASSIGN_OR_RETURN(const Cluster now, Addresses(target));
    return AllAttentionWorkersOn(now.attention, cluster, in_use, info_timeout_s);
  };
  if (union_fits) {
    // Also a set already loaded is loaded again (the worker only takes the new version): it claims the
    // worker, so a concurrent writer's trim (same old version) cannot free what this plan names.
    for (const auto& [w, experts] : unions) {
      if (experts.empty() && loaded_now(w).empty()) continue;
      RETURN_IF_ERROR(LoadExtras(cluster, cluster.experts[static_cast<size_t>(w)], version, experts,
                                 expert_version[w], flags.timeout_s));
      expert_version[w] = version;
    }
  } else {
    // The old and new copies do not fit together: back to the home shards first, then load the new set.
    std::cerr << "moectl cluster rebalance: the old and new extra experts do not fit a budget together; "
                 "switching to the home shards first"
              << std::endl;
    ASSIGN_OR_RETURN(const engine::ExpertPlacement plain, home_placement.WithExtras({}, version));
    RETURN_IF_ERROR(SetPlacement(cluster, plain, attention_versions, flags.timeout_s));
    attention_versions.assign(attention_versions.size(), version);
    // Loading the new sets frees the old copies: only once every attention worker is on the home shards.
    if (absl::Status free = safe_to_free(version); !free.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("switched to the home shards (placement version ", version,
                       ") but not loading the new extra experts, which frees the old ones: ", free.message(),
                       "; look again"));
    }
    std::vector<std::vector<int64_t>> lists(static_cast<size_t>(num_experts));
    for (int64_t e = 0; e < num_experts; ++e) lists[static_cast<size_t>(e)] = plan.placement.extra_workers(e);
    ASSIGN_OR_RETURN(target_placement, home_placement.WithExtras(std::move(lists), version + 1));
    for (const auto& [w, experts] : unions) {
      RETURN_IF_ERROR(LoadExtras(cluster, cluster.experts[static_cast<size_t>(w)], target_placement.version(),
                                 to_load(w), expert_version[w], flags.timeout_s));
      expert_version[w] = target_placement.version();
    }
  }
  RETURN_IF_ERROR(SetPlacement(cluster, target_placement, attention_versions, flags.timeout_s));
  // Every attention worker that answered now uses the new version: free the copies only the old one
  // used, unless one may still use another placement (then they stay, and the next look sees them).
  Applied applied{.version = target_placement.version(),
                  .extras = ExtrasOf(target_placement),
                  .placement = target_placement};
  std::string kept;
  if (union_fits) {
    bool trims = false;
    for (const auto& [w, experts] : unions) trims = trims || experts != to_load(w);
    if (trims) {
      if (absl::Status free = safe_to_free(target_placement.version()); !free.ok()) {
        kept = absl::StrCat("; the old copies stay loaded: ", free.message());
        std::cerr << "moectl cluster rebalance: not freeing the old extra experts: " << free.message()
                  << std::endl;
      }
    }
  }
  for (const auto& [w, experts] : unions) {
    applied.workers[w] = cluster.experts[static_cast<size_t>(w)];
    applied.loaded[w] = kept.empty() ? to_load(w) : experts;
    if (!union_fits || !kept.empty() || experts == to_load(w)) continue;
    RETURN_IF_ERROR(LoadExtras(cluster, cluster.experts[static_cast<size_t>(w)], version, to_load(w),
                               expert_version[w], flags.timeout_s));
  }
  if (watch != nullptr) *watch = std::move(applied);
  const std::string done =
      absl::StrFormat("applied placement version %d on %d attention and %d expert workers",
                      target_placement.version(), cluster.attention.size(), unions.size());
  if (watch == nullptr)
    std::cout << "applied: placement version " << target_placement.version() << " on "
              << cluster.attention.size() << " attention and " << unions.size() << " expert workers"
              << std::endl;
  return absl::StrFormat("%s; %s (predicted %.3f -> %.3f)%s", line, done, plan.ratio_before, plan.ratio_after,
                         kept);
}

void RunRebalance(const RebalanceFlags& flags) {
  const Target target = Resolve(flags);
  if (!flags.watch) {
    absl::StatusOr<std::string> done = Look(flags, target, nullptr);
    if (!done.ok()) Fail(kCommand, std::string(done.status().message()));
    return;
  }
  std::signal(SIGINT, OnStopSignal);
  std::signal(SIGTERM, OnStopSignal);
  std::cout << absl::StrFormat(
                   "moectl cluster rebalance --watch: a look every %.1f s (window %.1f s), applying above a "
                   "max/mean ratio of %.2f or when the cluster changes; SIGINT/SIGTERM stops\n",
                   flags.interval_s, flags.window_s, flags.min_ratio)
            << std::flush;
  std::optional<Applied> applied;
  int failures = 0;
  for (int64_t look = 1; !stop_requested; ++look) {
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<std::string> line = Look(flags, target, &applied);
    if (stop_requested) break;
    double wait_s = flags.interval_s;
    if (line.ok()) {
      failures = 0;
      std::cout << "look " << look << ": " << *line << std::endl;
    } else if (absl::IsAborted(line.status())) {
      // Another writer moved the placement on: not a failure; the next look plans from its state.
      failures = 0;
      std::cout << "look " << look << ": aborted: " << line.status().message()
                << absl::StrFormat("; next look in %.1f s", wait_s) << std::endl;
    } else {
      // Back off after failures: the interval, doubling up to the larger of a minute and the interval.
      wait_s = std::min(flags.interval_s * static_cast<double>(1 << std::min(failures, 6)),
                        std::max(60.0, flags.interval_s));
      ++failures;
      std::cout << "look " << look << ": error: " << line.status().message()
                << absl::StrFormat("; next look in %.1f s", wait_s) << std::endl;
    }
    const double spent = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!SleepUnlessStopped(std::max(0.0, wait_s - (line.ok() ? spent : 0.0)))) break;
  }
  std::cout << "moectl cluster rebalance --watch: stopped" << std::endl;
}

}  // namespace

void RegisterClusterRebalanceCommand(CLI::App& cluster) {
  auto flags = std::make_shared<RebalanceFlags>();
  CLI::App* cmd = cluster.add_subcommand(
      "rebalance",
      "Give hot experts extra copies on other expert workers (the expert load balancer), without failing a "
      "request; --watch keeps doing it");
  cmd->add_option("--state-dir", flags->state_dir, "The state dir given to `up` (the local cluster)");
  cmd->add_option("--attention-workers", flags->attention_workers,
                  "Any cluster: its attention workers' addresses, comma-separated (with --expert-workers); "
                  "ones that do not answer are skipped until they do");
  cmd->add_option(
      "--expert-workers", flags->expert_workers,
      "Any cluster: its expert workers' addresses in rank order (home, then joined), comma-separated");
  cmd->add_option("--tls-ca", flags->tls.ca_file,
                  "The cluster CA (PEM); default for the local cluster: its own");
  cmd->add_option("--tls-cert", flags->tls.cert_file, "An operator certificate of the cluster CA (PEM)");
  cmd->add_option("--tls-key", flags->tls.key_file, "The operator certificate's key (PEM)");
  cmd->add_flag("--insecure", flags->tls.insecure, "The cluster's internal hops are plaintext");
  cmd->add_option("--window", flags->window_s, "Seconds of routed rows to plan from (default 10)")
      ->check(CLI::Range(0.1, 3600.0));
  cmd->add_option("--timeout", flags->timeout_s,
                  "Deadline of each RPC in seconds (default 120; GetInfo and GetLoad: at most 10)")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--dry-run", flags->dry_run,
                "Print the measured load, the plan and its prediction; change nothing");
  CLI::Option* watch = cmd->add_flag(
      "--watch", flags->watch,
      "Keep balancing until SIGINT/SIGTERM: look every --interval seconds, apply when the ratio is "
      "above --min-ratio or the cluster changed; one line per look");
  cmd->add_option("--interval", flags->interval_s, "--watch: seconds from one look to the next (default 30)")
      ->check(CLI::Range(0.1, 86400.0))
      ->needs(watch);
  cmd->add_option("--min-ratio", flags->min_ratio,
                  "--watch: apply when the measured max/mean load ratio is above this (default 1.1)")
      ->check(CLI::Range(1.0, 1000.0))
      ->needs(watch);
  cmd->callback([flags] { RunRebalance(*flags); });
}

}  // namespace moe::moectl
