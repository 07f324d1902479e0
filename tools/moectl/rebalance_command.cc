// moectl cluster rebalance: runs the expert load balancer's planner for a cluster and applies its plan
// (docs/operations.md#rebalancing-experts, docs/architecture.md#expert-load-balancer).
//
//   moectl cluster rebalance [--state-dir D] [--window S] [--dry-run]
//   moectl cluster rebalance --attention-workers A,.. --expert-workers E,.. (--tls-ca/--tls-cert/--tls-key
//                            | --insecure) [--window S] [--dry-run]
//
// Reads every attention worker's per-expert row totals (WorkerLoad) twice, --window seconds apart, and
// every expert worker's info (rank, shard, extra experts, budget); plans with PlanExpertReplicas from
// the rows of the window, at most min over the expert workers of budget / expert bytes extra experts
// per worker; prints the measured load ratio, the plan and the predicted ratio before and after; and,
// unless --dry-run, applies it: LoadExtraExperts with the union of the old and new extra sets on every
// expert worker, SetExpertPlacement on every attention worker, then LoadExtraExperts with the new sets
// only to free the old copies. When the union does not fit a worker's budget, the attention workers
// first switch to the home shards (one version), the expert workers load the new sets, and the
// attention workers switch to the plan (the next version). No request waits or fails for any of it.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
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
};

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

struct Cluster {
  std::vector<std::string> attention;
  std::vector<std::string> experts;
  rpc::ClientCredentials credentials;
};

Cluster Resolve(const RebalanceFlags& flags) {
  Cluster cluster;
  rpc::TlsOptions tls = flags.tls;
  if (!flags.attention_workers.empty() || !flags.expert_workers.empty()) {
    if (flags.attention_workers.empty() || flags.expert_workers.empty())
      Fail(kCommand, "give both --attention-workers and --expert-workers (or neither: the local cluster)");
    cluster.attention = SplitAddresses(flags.attention_workers);
    cluster.experts = SplitAddresses(flags.expert_workers);
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
    cluster.attention = ReadAddressFile(state / "attention_workers");
    cluster.experts = ReadAddressFile(state / "expert_workers");
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
  if (cluster.attention.empty()) Fail(kCommand, "--attention-workers: no addresses");
  if (cluster.experts.empty()) Fail(kCommand, "--expert-workers: no addresses");
  absl::StatusOr<rpc::ClientCredentials> credentials = rpc::MakeClientCredentials(tls);
  if (!credentials.ok()) {
    Fail(kCommand, absl::StrCat("the cluster's credentials (--tls-ca, --tls-cert and --tls-key: an operator "
                                "certificate, or --insecure): ",
                                credentials.status().message()));
  }
  cluster.credentials = *credentials;
  return cluster;
}

std::chrono::system_clock::time_point Deadline(double seconds) {
  return std::chrono::system_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

// Every attention worker's load, validated: per-expert totals of one size everywhere and per-worker
// totals with one entry per expert worker.
std::vector<v1::WorkerLoad> ReadLoads(const Cluster& cluster, int64_t num_expert_workers, double timeout_s) {
  std::vector<v1::WorkerLoad> loads;
  for (const std::string& address : cluster.attention) {
    auto stub = v1::AttentionWorker::NewStub(cluster.credentials.CreateChannel(address));
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(timeout_s));
    v1::WorkerLoad load;
    const grpc::Status status = stub->GetLoad(&ctx, v1::GetLoadRequest(), &load);
    if (!status.ok()) Fail(kCommand, RpcError("GetLoad on attention worker " + address, status));
    if (load.expert_worker_rows_total_size() != 0 &&
        load.expert_worker_rows_total_size() != num_expert_workers) {
      Fail(kCommand, absl::StrCat("attention worker ", address, ": expert_worker_rows_total has ",
                                  load.expert_worker_rows_total_size(), " entries for ", num_expert_workers,
                                  " expert workers (is it part of this cluster?)"));
    }
    if (!loads.empty() && load.expert_rows_total_size() != 0 && loads.front().expert_rows_total_size() != 0 &&
        load.expert_rows_total_size() != loads.front().expert_rows_total_size()) {
      Fail(kCommand, absl::StrCat("attention worker ", address, ": expert_rows_total has ",
                                  load.expert_rows_total_size(), " experts, ", cluster.attention.front(),
                                  " has ", loads.front().expert_rows_total_size()));
    }
    loads.push_back(std::move(load));
  }
  return loads;
}

v1::ExpertWorkerInfo GetExpertInfo(const Cluster& cluster, const std::string& address, double timeout_s) {
  auto stub = v1::ExpertControl::NewStub(cluster.credentials.CreateChannel(address));
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(timeout_s));
  v1::ExpertWorkerInfo info;
  const grpc::Status status = stub->GetInfo(&ctx, v1::GetInfoRequest(), &info);
  if (!status.ok()) Fail(kCommand, RpcError("GetInfo on expert worker " + address, status));
  return info;
}

void LoadExtras(const Cluster& cluster, const std::string& address, uint64_t version,
                const std::vector<int64_t>& experts, double timeout_s) {
  auto stub = v1::ExpertControl::NewStub(cluster.credentials.CreateChannel(address));
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(timeout_s));
  v1::LoadExtraExpertsRequest request;
  request.set_placement_version(version);
  for (int64_t e : experts) request.add_experts(static_cast<int32_t>(e));
  v1::LoadExtraExpertsResponse response;
  const grpc::Status status = stub->LoadExtraExperts(&ctx, request, &response);
  if (!status.ok()) {
    Fail(kCommand, RpcError(absl::StrCat("LoadExtraExperts(version ", version, ", experts [",
                                         absl::StrJoin(experts, ","), "]) on expert worker ", address),
                            status));
  }
}

void SetPlacement(const Cluster& cluster, const engine::ExpertPlacement& placement, double timeout_s) {
  v1::SetExpertPlacementRequest request;
  request.set_placement_version(placement.version());
  for (int64_t e = 0; e < placement.num_experts(); ++e) {
    for (int64_t w : placement.extra_workers(e)) {
      v1::ExtraExpertCopy* copy = request.add_extras();
      copy->set_expert(static_cast<int32_t>(e));
      copy->set_worker(static_cast<int32_t>(w));
    }
  }
  for (const std::string& address : cluster.attention) {
    auto stub = v1::AttentionWorker::NewStub(cluster.credentials.CreateChannel(address));
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(timeout_s));
    v1::SetExpertPlacementResponse response;
    const grpc::Status status = stub->SetExpertPlacement(&ctx, request, &response);
    if (!status.ok()) {
      Fail(kCommand, RpcError(absl::StrCat("SetExpertPlacement(version ", placement.version(),
                                           ") on attention worker ", address),
                              status));
    }
  }
}

void RunRebalance(const RebalanceFlags& flags) {
  const Cluster cluster = Resolve(flags);
  const int64_t num_workers = static_cast<int64_t>(cluster.experts.size());

  // Expert workers, by rank: address i must be rank i of num_workers, all with the same replicas.
  std::vector<v1::ExpertWorkerInfo> infos;
  for (const std::string& address : cluster.experts)
    infos.push_back(GetExpertInfo(cluster, address, flags.timeout_s));
  for (size_t i = 0; i < infos.size(); ++i) {
    if (infos[i].num_expert_workers() != num_workers || infos[i].rank() != static_cast<int32_t>(i)) {
      Fail(kCommand, absl::StrCat("--expert-workers: ", cluster.experts[i], " is expert worker ",
                                  infos[i].rank(), " of ", infos[i].num_expert_workers(), "; give all ",
                                  num_workers, " expert workers' addresses in rank order"));
    }
    if (infos[i].expert_replicas() != infos[0].expert_replicas()) {
      Fail(kCommand, absl::StrCat("expert worker ", cluster.experts[i], " has expert_replicas ",
                                  infos[i].expert_replicas(), ", ", cluster.experts[0], " has ",
                                  infos[0].expert_replicas()));
    }
  }
  int64_t max_extras = -1;
  for (const v1::ExpertWorkerInfo& info : infos) {
    const int64_t fit = info.expert_bytes() > 0 ? info.extra_expert_budget_bytes() / info.expert_bytes() : 0;
    max_extras = max_extras < 0 ? fit : std::min(max_extras, fit);
  }
  if (max_extras <= 0) {
    std::string budgets;
    for (size_t i = 0; i < infos.size(); ++i) {
      absl::StrAppend(&budgets, i > 0 ? ", " : "", "expert-", i, " ", infos[i].extra_expert_budget_bytes());
    }
    Fail(kCommand,
         absl::StrCat("no expert worker can hold an extra expert: --extra-expert-budget is 0 (or below "
                      "one expert, ",
                      infos[0].expert_bytes(),
                      " bytes) on at least one expert worker (budgets in bytes: ", budgets,
                      "); start the cluster with `moectl cluster up --extra-expert-budget BYTES` "
                      "(expert workers: --extra_expert_budget_bytes, Helm: expert.extraExpertBudgetBytes)"));
  }

  // The window: two reads of the monotonic totals.
  const std::vector<v1::WorkerLoad> first = ReadLoads(cluster, num_workers, flags.timeout_s);
  std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int64_t>(flags.window_s * 1000)));
  const std::vector<v1::WorkerLoad> second = ReadLoads(cluster, num_workers, flags.timeout_s);
  std::vector<uint64_t> expert_rows;
  std::vector<double> worker_rows(static_cast<size_t>(num_workers), 0);
  uint64_t current_version = 0;
  for (const v1::ExpertWorkerInfo& info : infos)
    current_version = std::max(current_version, info.placement_version());
  for (size_t a = 0; a < second.size(); ++a) {
    const v1::WorkerLoad& now = second[a];
    const v1::WorkerLoad& then = first[a];
    current_version = std::max(current_version, now.expert_placement_version());
    if (now.expert_rows_total_size() == 0) continue;  // no MoE step yet
    if (expert_rows.empty()) expert_rows.assign(static_cast<size_t>(now.expert_rows_total_size()), 0);
    if (now.expert_rows_total_size() != static_cast<int>(expert_rows.size())) {
      Fail(kCommand, absl::StrCat("attention worker ", cluster.attention[a], ": expert_rows_total has ",
                                  now.expert_rows_total_size(), " experts, others ", expert_rows.size()));
    }
    const bool restarted = then.expert_rows_total_size() != now.expert_rows_total_size();
    for (int e = 0; e < now.expert_rows_total_size(); ++e) {
      const uint64_t before = restarted ? 0 : then.expert_rows_total(e);
      if (now.expert_rows_total(e) < before) {
        Fail(kCommand, absl::StrCat("attention worker ", cluster.attention[a],
                                    " restarted during the window; run the command again"));
      }
      expert_rows[static_cast<size_t>(e)] += now.expert_rows_total(e) - before;
    }
    const bool worker_restarted = then.expert_worker_rows_total_size() != now.expert_worker_rows_total_size();
    for (int w = 0; w < now.expert_worker_rows_total_size(); ++w) {
      const uint64_t before = worker_restarted ? 0 : then.expert_worker_rows_total(w);
      if (now.expert_worker_rows_total(w) >= before)
        worker_rows[static_cast<size_t>(w)] += static_cast<double>(now.expert_worker_rows_total(w) - before);
    }
  }
  uint64_t total_rows = 0;
  for (uint64_t rows : expert_rows) total_rows += rows;
  if (total_rows == 0) {
    Fail(kCommand, absl::StrCat("no expert rows were routed in the ", flags.window_s,
                                " s window (--window): nothing to plan from; rebalance while requests run"));
  }
  const int64_t num_experts = static_cast<int64_t>(expert_rows.size());
  if (absl::Status valid =
          engine::ExpertPlacement::Validate(num_experts, num_workers, infos[0].expert_replicas());
      !valid.ok()) {
    Fail(kCommand, std::string(valid.message()));
  }
  std::vector<int32_t> peers;
  for (int64_t w = 0; w < num_workers; ++w)
    peers.push_back(engine::kFirstExpertPeerId + static_cast<int32_t>(w));
  const engine::ExpertPlacement home(num_experts, peers, infos[0].expert_replicas());
  for (int64_t w = 0; w < num_workers; ++w) {
    const engine::ExpertRange range = home.range(w);
    const v1::ExpertWorkerInfo& info = infos[static_cast<size_t>(w)];
    if (range.first != info.first_expert() || range.count != info.num_experts()) {
      Fail(kCommand,
           absl::StrCat("expert worker ", cluster.experts[static_cast<size_t>(w)], " serves experts [",
                        info.first_expert(), ", ", info.first_expert() + info.num_experts(),
                        "), not the shard [", range.first, ", ", range.first + range.count, ") of ",
                        num_experts, " experts: the workers disagree on the model"));
    }
  }
  absl::StatusOr<engine::ExpertPlacement> base = home.WithExtras({}, current_version);
  if (!base.ok()) Fail(kCommand, std::string(base.status().message()));
  absl::StatusOr<engine::BalancePlan> plan = engine::PlanExpertReplicas(*base, expert_rows, max_extras);
  if (!plan.ok()) Fail(kCommand, std::string(plan.status().message()));

  std::cout << absl::StrFormat("window: %.1f s, %d expert rows from %d attention workers\n", flags.window_s,
                               total_rows, cluster.attention.size());
  std::cout << absl::StrFormat("measured load ratio (max/mean rows per expert worker): %.3f\n",
                               engine::MaxMeanRatio(worker_rows));
  std::cout << absl::StrFormat(
      "plan: placement version %d, at most %d extra experts per expert worker (one expert: %d bytes)\n",
      plan->placement.version(), max_extras, infos[0].expert_bytes());
  for (int64_t w = 0; w < num_workers; ++w) {
    const std::vector<int64_t> extras = plan->placement.extra_experts(w);
    const std::vector<int32_t> old(infos[static_cast<size_t>(w)].extra_experts().begin(),
                                   infos[static_cast<size_t>(w)].extra_experts().end());
    std::cout << "  expert-" << w << " (" << cluster.experts[static_cast<size_t>(w)] << "): extra experts ["
              << absl::StrJoin(extras, ",") << "] (now [" << absl::StrJoin(old, ",") << "])\n";
  }
  std::cout << absl::StrFormat("predicted load ratio: %.3f -> %.3f\n", plan->ratio_before, plan->ratio_after)
            << std::flush;
  if (flags.dry_run) {
    std::cout << "dry run: nothing changed" << std::endl;
    return;
  }

  // Load before switching: no attention worker ever sends an expert to a worker not holding it.
  bool union_fits = true;
  std::vector<std::vector<int64_t>> unions;
  for (int64_t w = 0; w < num_workers; ++w) {
    const v1::ExpertWorkerInfo& info = infos[static_cast<size_t>(w)];
    std::set<int64_t> both(info.extra_experts().begin(), info.extra_experts().end());
    for (int64_t e : plan->placement.extra_experts(w)) both.insert(e);
    unions.emplace_back(both.begin(), both.end());
    if (static_cast<int64_t>(both.size()) * info.expert_bytes() > info.extra_expert_budget_bytes())
      union_fits = false;
  }
  const uint64_t version = plan->placement.version();
  engine::ExpertPlacement target = plan->placement;
  if (union_fits) {
    for (int64_t w = 0; w < num_workers; ++w)
      LoadExtras(cluster, cluster.experts[static_cast<size_t>(w)], version, unions[static_cast<size_t>(w)],
                 flags.timeout_s);
  } else {
    // The old and new copies do not fit together: back to the home shards first, then load the new set.
    std::cerr << "moectl cluster rebalance: the old and new extra experts do not fit a budget together; "
                 "switching to the home shards first"
              << std::endl;
    absl::StatusOr<engine::ExpertPlacement> plain = home.WithExtras({}, version);
    if (!plain.ok()) Fail(kCommand, std::string(plain.status().message()));
    SetPlacement(cluster, *plain, flags.timeout_s);
    std::vector<std::vector<int64_t>> lists(static_cast<size_t>(num_experts));
    for (int64_t e = 0; e < num_experts; ++e)
      lists[static_cast<size_t>(e)] = plan->placement.extra_workers(e);
    absl::StatusOr<engine::ExpertPlacement> next = home.WithExtras(std::move(lists), version + 1);
    if (!next.ok()) Fail(kCommand, std::string(next.status().message()));
    target = *next;
    for (int64_t w = 0; w < num_workers; ++w)
      LoadExtras(cluster, cluster.experts[static_cast<size_t>(w)], target.version(), target.extra_experts(w),
                 flags.timeout_s);
  }
  SetPlacement(cluster, target, flags.timeout_s);
  // Every attention worker now uses the new version: free the copies only the old one used.
  if (union_fits) {
    for (int64_t w = 0; w < num_workers; ++w) {
      if (unions[static_cast<size_t>(w)].size() != target.extra_experts(w).size())
        LoadExtras(cluster, cluster.experts[static_cast<size_t>(w)], version, target.extra_experts(w),
                   flags.timeout_s);
    }
  }
  std::cout << "applied: placement version " << target.version() << " on " << cluster.attention.size()
            << " attention and " << num_workers << " expert workers" << std::endl;
}

}  // namespace

void RegisterClusterRebalanceCommand(CLI::App& cluster) {
  auto flags = std::make_shared<RebalanceFlags>();
  CLI::App* cmd = cluster.add_subcommand(
      "rebalance",
      "Give hot experts extra copies on other expert workers (the expert load balancer), without failing a "
      "request");
  cmd->add_option("--state-dir", flags->state_dir, "The state dir given to `up` (the local cluster)");
  cmd->add_option("--attention-workers", flags->attention_workers,
                  "Any cluster: its attention workers' addresses, comma-separated (with --expert-workers)");
  cmd->add_option("--expert-workers", flags->expert_workers,
                  "Any cluster: its expert workers' addresses in rank order, comma-separated");
  cmd->add_option("--tls-ca", flags->tls.ca_file,
                  "The cluster CA (PEM); default for the local cluster: its own");
  cmd->add_option("--tls-cert", flags->tls.cert_file, "An operator certificate of the cluster CA (PEM)");
  cmd->add_option("--tls-key", flags->tls.key_file, "The operator certificate's key (PEM)");
  cmd->add_flag("--insecure", flags->tls.insecure, "The cluster's internal hops are plaintext");
  cmd->add_option("--window", flags->window_s, "Seconds of routed rows to plan from (default 10)")
      ->check(CLI::Range(0.1, 3600.0));
  cmd->add_option("--timeout", flags->timeout_s, "Deadline of each RPC in seconds (default 120)")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--dry-run", flags->dry_run,
                "Print the measured load, the plan and its prediction; change nothing");
  cmd->callback([flags] { RunRebalance(*flags); });
}

}  // namespace moe::moectl
