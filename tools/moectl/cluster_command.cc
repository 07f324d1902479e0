// moectl cluster up|down: a local cluster on 127.0.0.1 (docs/operations.md#a-local-cluster).
//
//   moectl cluster up --model DIR --attention-workers M --expert-workers N [--port P] [--detach]
//
// starts N expert workers, M attention workers and one router (the service binaries next to
// moectl), waits until the router reports SERVING, prints the router address, and stays up until
// SIGINT/SIGTERM, then stops every child (SIGTERM, then SIGKILL after a grace period). If a child
// dies, the cluster is torn down and `up` exits non-zero. With --detach it daemonizes and records
// its pid in --state-dir; `moectl cluster down` stops it. The state dir also holds each child's log
// (<name>.log) and pid (<name>.pid: expert-0.., attention-0.., router).
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "tools/moectl/commands.h"

namespace moe::moectl {
namespace {

namespace fs = std::filesystem;

struct ClusterFlags {
  std::string model_dir;
  int attention_workers = 1;
  int expert_workers = 1;
  int port = 50051;
  int metrics_port = 0;  // first metrics port; 0: port + 1000
  std::string state_dir;
  bool detach = false;
  double startup_timeout_s = 300;
  std::string transport = "ucx";
};

std::atomic<bool> stop_requested{false};
void OnSignal(int) {
  stop_requested = true;
}

std::string DefaultStateDir() {
  const char* runtime = std::getenv("XDG_RUNTIME_DIR");
  return std::string(runtime && *runtime ? runtime : "/tmp") + "/moectl-cluster-" + std::to_string(getuid());
}

fs::path BinaryDir() {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path(".") : self.parent_path();
}

struct Child {
  std::string name;
  pid_t pid = -1;
};

pid_t Spawn(const fs::path& binary, const std::vector<std::string>& args, const fs::path& log) {
  const pid_t pid = fork();
  if (pid != 0) return pid;
  // Child: own process group so a terminal ^C reaches the supervisor only, which stops us in order.
  setpgid(0, 0);
  const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (fd >= 0) {
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
  }
  std::vector<char*> argv;
  std::string bin = binary.string();
  argv.push_back(bin.data());
  std::vector<std::string> copy = args;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  execv(bin.c_str(), argv.data());
  std::fprintf(stderr, "exec %s: %s\n", bin.c_str(), std::strerror(errno));
  _exit(127);
}

bool HealthServing(const std::string& address) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service("readiness");
  grpc::health::v1::HealthCheckResponse response;
  return stub->Check(&ctx, request, &response).ok() &&
         response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

// Returns the name of a child that exited, if any (reaping it).
std::optional<std::string> ReapDead(std::vector<Child>& children) {
  for (Child& c : children) {
    if (c.pid <= 0) continue;
    int status = 0;
    if (waitpid(c.pid, &status, WNOHANG) == c.pid) {
      c.pid = -1;
      return c.name + (WIFSIGNALED(status) ? absl::StrCat(" (killed by signal ", WTERMSIG(status), ")")
                                           : absl::StrCat(" (exit ", WEXITSTATUS(status), ")"));
    }
  }
  return std::nullopt;
}

// Stops children in reverse start order: SIGTERM, wait up to `grace`, then SIGKILL.
void StopAll(std::vector<Child>& children, std::chrono::seconds grace) {
  for (auto it = children.rbegin(); it != children.rend(); ++it) {
    if (it->pid > 0) kill(it->pid, SIGTERM);
  }
  const auto deadline = std::chrono::steady_clock::now() + grace;
  for (Child& c : children) {
    while (c.pid > 0) {
      int status;
      if (waitpid(c.pid, &status, WNOHANG) == c.pid) {
        c.pid = -1;
        break;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        kill(c.pid, SIGKILL);
        waitpid(c.pid, &status, 0);
        c.pid = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
}

void RunUp(const ClusterFlags& flags) {
  const fs::path bin = BinaryDir();
  for (const char* name : {"moe-router", "moe-attention-worker", "moe-expert-worker"}) {
    if (!fs::exists(bin / name)) Fail("cluster up", absl::StrCat("cannot find ", (bin / name).string()));
  }
  const fs::path state = flags.state_dir.empty() ? fs::path(DefaultStateDir()) : fs::path(flags.state_dir);
  std::error_code ec;
  fs::create_directories(state, ec);
  if (ec) Fail("cluster up", "--state-dir: cannot create " + state.string() + ": " + ec.message());
  const fs::path pid_file = state / "supervisor.pid";
  if (fs::exists(pid_file)) {
    std::ifstream in(pid_file);
    pid_t pid = 0;
    if (in >> pid && pid > 0 && kill(pid, 0) == 0) {
      Fail("cluster up", absl::StrCat("a cluster is already running (pid ", pid, ", state ", state.string(),
                                      "); stop it with `moectl cluster down`"));
    }
  }

  if (flags.detach) {
    const pid_t pid = fork();
    if (pid < 0) Fail("cluster up", "fork failed");
    if (pid > 0) {
      // Parent: wait for the supervisor to report the router address (or fail) and exit.
      const fs::path ready = state / "router.address";
      const auto deadline =
          std::chrono::steady_clock::now() + std::chrono::duration<double>(flags.startup_timeout_s + 10);
      while (std::chrono::steady_clock::now() < deadline) {
        if (fs::exists(ready)) {
          std::ifstream in(ready);
          std::string address;
          std::getline(in, address);
          std::cout << address << std::endl;
          return;
        }
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
          Fail("cluster up", "the cluster failed to start; logs in " + state.string());
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      Fail("cluster up", "timed out waiting for the cluster; logs in " + state.string());
    }
    setsid();
    // Let go of the caller's terminal or pipe: a caller reading `up`'s output must see EOF when the
    // parent exits, not when the cluster stops.
    const int null_fd = open("/dev/null", O_RDONLY);
    const int log_fd = open((state / "supervisor.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
    if (log_fd >= 0) {
      dup2(log_fd, STDOUT_FILENO);
      dup2(log_fd, STDERR_FILENO);
    }
  }
  fs::remove(state / "router.address", ec);
  { std::ofstream(pid_file) << getpid() << "\n"; }

  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  // gRPC and /metrics of a local cluster listen on loopback only.
  const std::string host = "127.0.0.1";
  const int base = flags.port;
  // Ports: router `port`, attention workers port+1.., expert workers after them.
  std::vector<std::string> attention, experts;
  for (int i = 0; i < flags.attention_workers; ++i)
    attention.push_back(absl::StrCat(host, ":", base + 1 + i));
  for (int i = 0; i < flags.expert_workers; ++i) {
    experts.push_back(absl::StrCat(host, ":", base + 1 + flags.attention_workers + i));
  }
  const int metrics_base = flags.metrics_port > 0 ? flags.metrics_port : base + 1000;
  int next_metrics = metrics_base;
  std::vector<Child> children;
  auto fail = [&](const std::string& message) {
    StopAll(children, std::chrono::seconds(5));
    fs::remove(pid_file, ec);
    Fail("cluster up", message + "; logs in " + state.string());
  };
  for (int i = 0; i < flags.expert_workers; ++i) {
    const std::string name = absl::StrCat("expert-", i);
    children.push_back({name, Spawn(bin / "moe-expert-worker",
                                    {"--model=" + flags.model_dir, absl::StrCat("--rank=", i),
                                     absl::StrCat("--num_expert_workers=", flags.expert_workers),
                                     "--listen=" + experts[static_cast<size_t>(i)],
                                     absl::StrCat("--metrics_port=", next_metrics++),
                                     "--metrics_listen=" + host, "--transport=" + flags.transport},
                                    state / (name + ".log"))});
  }
  for (int i = 0; i < flags.attention_workers; ++i) {
    const std::string name = absl::StrCat("attention-", i);
    children.push_back({name, Spawn(bin / "moe-attention-worker",
                                    {"--model=" + flags.model_dir, absl::StrCat("--rank=", i),
                                     absl::StrCat("--num_attention_workers=", flags.attention_workers),
                                     "--expert_workers=" + absl::StrJoin(experts, ","),
                                     "--listen=" + attention[static_cast<size_t>(i)],
                                     absl::StrCat("--metrics_port=", next_metrics++),
                                     "--metrics_listen=" + host, "--transport=" + flags.transport},
                                    state / (name + ".log"))});
  }
  for (const Child& c : children) std::ofstream(state / (c.name + ".pid")) << c.pid << "\n";
  const std::string router = absl::StrCat(host, ":", base);
  children.push_back(
      {"router", Spawn(bin / "moe-router",
                       {"--model=" + flags.model_dir, "--attention_workers=" + absl::StrJoin(attention, ","),
                        "--expert_workers=" + absl::StrJoin(experts, ","), "--listen=" + router,
                        absl::StrCat("--metrics_port=", next_metrics++), "--metrics_listen=" + host},
                       state / "router.log")});

  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(flags.startup_timeout_s);
  while (!HealthServing(router)) {
    if (stop_requested) fail("interrupted while starting");
    if (auto dead = ReapDead(children)) fail(*dead + " exited during startup");
    if (std::chrono::steady_clock::now() > deadline) fail("the router did not become ready in time");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::ofstream(state / "router.pid") << children.back().pid << "\n";
  { std::ofstream(state / "router.address") << router << "\n"; }
  if (!flags.detach) {
    std::cout << router << std::endl;
    std::cerr << "moectl cluster: router " << router << ", " << flags.attention_workers << " attention and "
              << flags.expert_workers << " expert workers (metrics from port " << metrics_base << "; logs in "
              << state.string() << "); Ctrl-C stops it" << std::endl;
  }
  std::optional<std::string> died;
  while (!stop_requested && !(died = ReapDead(children))) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  StopAll(children, std::chrono::seconds(10));
  fs::remove(pid_file, ec);
  fs::remove(state / "router.address", ec);
  if (died) Fail("cluster up", *died + " exited; the cluster was stopped");
}

void RunDown(const std::string& state_dir) {
  const fs::path state = state_dir.empty() ? fs::path(DefaultStateDir()) : fs::path(state_dir);
  std::ifstream in(state / "supervisor.pid");
  pid_t pid = 0;
  if (!(in >> pid) || pid <= 0)
    Fail("cluster down", "no cluster is running (no pid in " + state.string() + ")");
  if (kill(pid, SIGTERM) != 0) {
    std::error_code ec;
    fs::remove(state / "supervisor.pid", ec);
    Fail("cluster down", absl::StrCat("no cluster is running (pid ", pid, " is gone)"));
  }
  for (int i = 0; i < 300 && kill(pid, 0) == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  if (kill(pid, 0) == 0)
    Fail("cluster down", absl::StrCat("the supervisor (pid ", pid, ") did not stop in 30 s"));
  std::cerr << "moectl cluster: stopped" << std::endl;
}

}  // namespace

void RegisterClusterCommand(CLI::App& app) {
  CLI::App* cluster = app.add_subcommand("cluster", "Run a local cluster on 127.0.0.1");
  cluster->require_subcommand(1);
  auto flags = std::make_shared<ClusterFlags>();
  CLI::App* up = cluster->add_subcommand(
      "up", "Start a router, attention and expert workers; stay up until SIGINT/SIGTERM");
  up->add_option("--model", flags->model_dir, "Model directory")->required()->check(CLI::ExistingDirectory);
  up->add_option("--attention-workers", flags->attention_workers, "Attention workers")
      ->check(CLI::Range(1, 64));
  up->add_option("--expert-workers", flags->expert_workers, "Expert workers")->check(CLI::Range(1, 128));
  up->add_option("--port", flags->port, "Router port; workers use the ports after it")
      ->check(CLI::Range(1, 65000));
  up->add_option("--metrics-port", flags->metrics_port, "First metrics port (default: port + 1000)")
      ->check(CLI::Range(0, 65000));
  up->add_option("--state-dir", flags->state_dir, "Where logs and the pid file go");
  up->add_option("--startup-timeout", flags->startup_timeout_s, "Seconds to wait for readiness");
  up->add_option("--transport", flags->transport, "Data plane")->check(CLI::IsMember({"ucx"}));
  up->add_flag("--detach", flags->detach, "Run in the background; stop with `moectl cluster down`");
  up->callback([flags] { RunUp(*flags); });
  auto state_dir = std::make_shared<std::string>();
  CLI::App* down = cluster->add_subcommand("down", "Stop a cluster started with --detach");
  down->add_option("--state-dir", *state_dir, "The state dir given to `up`");
  down->callback([state_dir] { RunDown(*state_dir); });
}

}  // namespace moe::moectl
