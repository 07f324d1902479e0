#include "tests/integration/local_cluster.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/util/test_models.h"

namespace moe::testing {
std::unique_ptr<LocalCluster> LocalCluster::Start(const std::string& model_dir, int attention_workers,
                                                  int expert_workers) {
  constexpr int kStartupSeconds = 120;
  auto cluster = std::unique_ptr<LocalCluster>(new LocalCluster());
  cluster->moectl_ = std::string(MOE_BINARY_DIR_DEFAULT) + "/bin/moectl";
  cluster->state_dir_ = MakeTempDir("moe-cluster");
  // moectl puts the router at `port`, the workers after it and the metrics ports at port + 1000.
  auto ports = ReservePorts(1 + attention_workers + expert_workers, /*offset=*/1000);
  if (!ports.ok()) {
    std::cerr << "LocalCluster: " << ports.status() << std::endl;
    return nullptr;
  }
  cluster->ports_ = *std::move(ports);
  const int base = cluster->ports_->base();
  const std::string cmd =
      absl::StrCat(cluster->moectl_, " cluster up --detach --model ", model_dir, " --attention-workers ",
                   attention_workers, " --expert-workers ", expert_workers, " --port ", base, " --state-dir ",
                   cluster->state_dir_, " --startup-timeout ", kStartupSeconds, " > ", cluster->state_dir_,
                   "/up.out 2>&1");
  const absl::Time deadline = absl::Now() + absl::Seconds(kStartupSeconds);
  if (std::system(cmd.c_str()) != 0) {
    std::cerr << "LocalCluster: cluster up failed:\n" << cluster->Logs() << std::endl;
    return nullptr;
  }
  cluster->router_ = LocalAddress(base);
  for (int i = 0; i < attention_workers; ++i) cluster->attention_.push_back(LocalAddress(base + 1 + i));
  for (int i = 0; i < expert_workers; ++i) {
    cluster->experts_.push_back(LocalAddress(base + 1 + attention_workers + i));
  }
  // `cluster up` returns once the router is ready; every process must be, before a test may assume
  // anything of it (a worker's readiness is what the router's depends on, checked here directly).
  rpc::TlsOptions tls;
  tls.ca_file = cluster->state_dir_ + "/tls/ca.crt";
  tls.cert_file = cluster->state_dir_ + "/tls/tls.crt";
  tls.key_file = cluster->state_dir_ + "/tls/tls.key";
  auto credentials = rpc::MakeClientCredentials(tls);
  if (!credentials.ok()) {
    std::cerr << "LocalCluster: " << credentials.status() << "\n" << cluster->Logs() << std::endl;
    return nullptr;
  }
  cluster->worker_credentials_ = *credentials;
  if (absl::Status ready = WaitForHealth(cluster->router_, "readiness", true, deadline); !ready.ok()) {
    std::cerr << "LocalCluster: " << ready << "\n" << cluster->Logs() << std::endl;
    return nullptr;
  }
  std::vector<std::string> workers = cluster->attention_;
  workers.insert(workers.end(), cluster->experts_.begin(), cluster->experts_.end());
  for (const std::string& address : workers) {
    if (absl::Status ready =
            WaitForHealth(address, "readiness", true, deadline, cluster->worker_credentials_);
        !ready.ok()) {
      std::cerr << "LocalCluster: " << ready << "\n" << cluster->Logs() << std::endl;
      return nullptr;  // the destructor stops what did start
    }
  }
  return cluster;
}

LocalCluster::~LocalCluster() {
  const std::string cmd =
      absl::StrCat(moectl_, " cluster down --state-dir ", state_dir_, " > /dev/null 2>&1");
  if (!router_.empty() && std::system(cmd.c_str()) != 0) std::cerr << "cluster down failed" << std::endl;
}

pid_t LocalCluster::Pid(const std::string& child) const {
  std::ifstream in(state_dir_ + "/" + child + ".pid");
  pid_t pid = -1;
  in >> pid;
  return pid;
}

std::string LocalCluster::Logs() const {
  std::ostringstream out;
  for (const auto& entry : std::filesystem::directory_iterator(state_dir_)) {
    if (entry.path().extension() != ".log" && entry.path().extension() != ".out") continue;
    std::ifstream in(entry.path());
    std::string text((std::istreambuf_iterator<char>(in)), {});
    if (text.size() > 4000) text = "..." + text.substr(text.size() - 4000);
    out << "==== " << entry.path().filename().string() << "\n" << text << "\n";
  }
  return out.str();
}

}  // namespace moe::testing
