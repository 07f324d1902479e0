#include "tests/integration/local_cluster.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "tests/util/test_models.h"

namespace moe::testing {
namespace {

bool PortFree(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

}  // namespace

int FreePortBlock(int count) {
  std::mt19937 rng(static_cast<unsigned>(getpid()) * 7919u + static_cast<unsigned>(time(nullptr)));
  for (int attempt = 0; attempt < 200; ++attempt) {
    // Below the ephemeral range (32768+), so no outgoing connection takes a port between our check
    // and the cluster's bind; metrics ports are base + 1000.
    const int base = 10000 + static_cast<int>(rng() % 21000);
    bool ok = true;
    for (int i = 0; i < count && ok; ++i) ok = PortFree(base + i) && PortFree(base + 1000 + i);
    if (ok) return base;
  }
  return -1;
}

std::unique_ptr<LocalCluster> LocalCluster::Start(const std::string& model_dir, int attention_workers,
                                                  int expert_workers) {
  auto cluster = std::unique_ptr<LocalCluster>(new LocalCluster());
  cluster->moectl_ = std::string(MOE_BINARY_DIR_DEFAULT) + "/bin/moectl";
  cluster->state_dir_ = MakeTempDir("moe-cluster");
  const int count = 1 + attention_workers + expert_workers;
  for (int attempt = 0; attempt < 3; ++attempt) {
    const int base = FreePortBlock(count);
    if (base < 0) break;
    const std::string cmd = absl::StrCat(
        cluster->moectl_, " cluster up --detach --model ", model_dir, " --attention-workers ",
        attention_workers, " --expert-workers ", expert_workers, " --port ", base, " --state-dir ",
        cluster->state_dir_, " --startup-timeout 120 > ", cluster->state_dir_, "/up.out 2>&1");
    if (std::system(cmd.c_str()) == 0) {
      cluster->router_ = absl::StrCat("127.0.0.1:", base);
      for (int i = 0; i < attention_workers; ++i)
        cluster->attention_.push_back(absl::StrCat("127.0.0.1:", base + 1 + i));
      for (int i = 0; i < expert_workers; ++i) {
        cluster->experts_.push_back(absl::StrCat("127.0.0.1:", base + 1 + attention_workers + i));
      }
      return cluster;
    }
    std::cerr << "cluster up failed (attempt " << attempt + 1 << "):\n" << cluster->Logs() << std::endl;
  }
  return nullptr;
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
