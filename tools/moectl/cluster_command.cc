// moectl cluster up|down: a local cluster on 127.0.0.1 (docs/operations.md#a-local-cluster).
//
//   moectl cluster up --model DIR --attention-workers M --expert-workers N [--expert-replicas R]
//                     [--joinable-expert-workers J]
//                     [--port P] [--http-port H]
//                     [--detach]
//
// checks that every port it will use is free, starts N expert workers, M attention workers and one
// router (the service binaries next to moectl), reports each child as it becomes ready on stderr
// ("expert-1 ready (2/7)"), then prints "ready" on stderr and the router address on stdout once the
// router reports SERVING (with --http-port, the router also serves the OpenAI-compatible HTTP API
// on 127.0.0.1:H, docs/http-api.md, and its URL is printed on stderr), and stays up until SIGINT/SIGTERM,
// then stops every child (SIGTERM, then SIGKILL after a grace period). If a child dies during start-up, the
// cluster is torn down and `up` exits non-zero with the child's exit status and the last lines of its log;
// one that dies later is restarted (--max-restarts, backoff 1 s doubling to 10 s). With --detach it
// daemonizes and records its pid in --state-dir, but returns only once the cluster is ready (printing the
// same progress and the router address) or has failed (exit 1, with the reason); `moectl cluster down` stops
// it. The state dir also holds each child's log (<name>.log) and pid (<name>.pid: expert-0.., attention-0..,
// router).
//
//   moectl cluster scale [--attention-workers N] [--expert-workers N] [--state-dir D]
//
// changes the attention workers of a running `cluster up` (docs/operations.md#scaling): the
// supervisor starts new ones (fresh ranks and ports), waits until they are ready, and rewrites the
// router's --attention_workers_file; or it takes the newest ones out of that file, waits until the
// router has stopped placing on them, and stops them with SIGTERM (their open streams migrate), so no
// request fails. `scale` hands the supervisor a request file and SIGUSR1 and prints its answer.
// --expert-workers adds or removes expert workers beyond the home ones, up to
// `up --joinable-expert-workers` (docs/operations.md#scaling), and keeps <state>/expert_workers (what
// `cluster rebalance` reads) listing the running ones in rank order.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/engine/expert_compute_factory.h"
#include "common/kernels/device_spec.h"
#include "common/rpc/tls.h"
#include "common/rpc/tls_certificates.h"
#include "common/transport/nccl/transport_choice.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "moe/v1/attention.grpc.pb.h"
#include "moe/v1/expert_control.grpc.pb.h"
#include "moe/v1/generate.grpc.pb.h"
#include "tools/moectl/commands.h"

namespace moe::moectl {
namespace {

namespace fs = std::filesystem;

struct ClusterFlags {
  std::string model_dir;
  int attention_workers = 1;
  int expert_workers = 1;
  int expert_replicas = 1;  // copies of each expert shard; divides expert_workers
  // Expert workers `scale --expert-workers` may add (ports reserved after the home ones; the attention
  // workers' --joinable_expert_workers).
  int joinable_expert_workers = 0;
  int micro_batches = 1;  // attention workers' --micro_batches
  int port = 50051;
  int metrics_port = 0;  // first metrics port; 0: port + 1000
  std::string state_dir;
  bool detach = false;
  double startup_timeout_s = 300;
  std::string transport = "ucx";
  std::string device = "cpu";             // every worker's --device
  bool insecure = false;                  // plaintext internal hops instead of mTLS
  double kv_cache_gib = 0;                // attention workers' --kv_cache_gib; 0: theirs (8)
  int max_restarts = 3;                   // per child, after the cluster is ready
  int http_port = 0;                      // the router's OpenAI-compatible HTTP API on 127.0.0.1 (0: none)
  int64_t extra_expert_budget_bytes = 0;  // expert workers' --extra_expert_budget_bytes
};

std::atomic<bool> stop_requested{false};
void OnSignal(int) {
  stop_requested = true;
}
std::atomic<bool> scale_requested{false};  // SIGUSR1 from `moectl cluster scale`
void OnScaleSignal(int) {
  scale_requested = true;
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
  fs::path binary;  // how to start it again
  std::vector<std::string> args;
  int restarts = 0;
  std::optional<std::chrono::steady_clock::time_point> restart_at;
  std::string address;  // its gRPC HOST:PORT (health checks)
  fs::path log;
  bool ready = false;
  bool mtls = false;  // its port wants a client certificate (workers; not the router's public port)
};

constexpr int kLogTailLines = 20;

// The last `lines` lines of `path`, each indented, or a note that there is no log.
std::string LogTail(const fs::path& path, int lines) {
  std::ifstream in(path);
  if (!in) return "  (no log at " + path.string() + ")\n";
  std::deque<std::string> tail;
  for (std::string line; std::getline(in, line);) {
    tail.push_back(std::move(line));
    if (static_cast<int>(tail.size()) > lines) tail.pop_front();
  }
  if (tail.empty()) return "  (" + path.string() + " is empty)\n";
  std::string out;
  for (const std::string& line : tail) absl::StrAppend(&out, "  | ", line, "\n");
  return out;
}

// True if nothing listens on `port` (any address): a bind to 0.0.0.0:port succeeds. SO_REUSEADDR
// as servers set it, so connections of an earlier cluster lingering in TIME_WAIT do not count; a
// listener (even one with SO_REUSEPORT, which this socket does not set) does.
bool PortIsFree(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return true;  // cannot tell; the child will report a clash
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  // Only EADDRINUSE means taken; other failures (EACCES for a privileged port) are left to the child.
  const bool in_use =
      bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0 && errno == EADDRINUSE;
  close(fd);
  return !in_use;
}

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

bool HealthServing(const std::string& address, const rpc::ClientCredentials& credentials) {
  auto channel = credentials.CreateChannel(address);
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service("readiness");
  grpc::health::v1::HealthCheckResponse response;
  return stub->Check(&ctx, request, &response).ok() &&
         response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

// If a child exited, reaps it and returns "<name> exited (exit N)" or "(killed by signal N)" and
// the last lines of its log.
std::optional<std::string> ReapDead(std::vector<Child>& children) {
  for (Child& c : children) {
    if (c.pid <= 0) continue;
    int status = 0;
    if (waitpid(c.pid, &status, WNOHANG) == c.pid) {
      c.pid = -1;
      const std::string how = WIFSIGNALED(status) ? absl::StrCat("killed by signal ", WTERMSIG(status), " (",
                                                                 strsignal(WTERMSIG(status)), ")")
                                                  : absl::StrCat("exit status ", WEXITSTATUS(status));
      return absl::StrCat(c.name, " exited (", how, "); the last lines of ", c.log.string(), ":\n",
                          LogTail(c.log, kLogTailLines));
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

// A `moectl cluster scale` request, as the state dir's scale.request holds it:
// "id=ID attention_workers=N expert_workers=M" (-1: not asked for).
struct ScaleRequest {
  std::string id;
  int attention_workers = -1;
  int expert_workers = -1;
};

std::string FormatScaleRequest(const ScaleRequest& r) {
  return absl::StrCat("id=", r.id, " attention_workers=", r.attention_workers,
                      " expert_workers=", r.expert_workers, "\n");
}

std::optional<ScaleRequest> ReadScaleRequest(const fs::path& path) {
  std::ifstream in(path);
  ScaleRequest r;
  std::string word;
  bool have_id = false;
  while (in >> word) {
    const size_t eq = word.find('=');
    if (eq == std::string::npos) return std::nullopt;
    const std::string key = word.substr(0, eq), value = word.substr(eq + 1);
    if (key == "id") {
      r.id = value;
      have_id = !value.empty();
    } else if (key == "attention_workers" || key == "expert_workers") {
      int n = 0;
      if (!absl::SimpleAtoi(value, &n)) return std::nullopt;
      (key == "attention_workers" ? r.attention_workers : r.expert_workers) = n;
    } else {
      return std::nullopt;
    }
  }
  if (!have_id) return std::nullopt;
  return r;
}

// Writes `contents` to `path` through a rename, so a reader sees the old or the new file whole.
void WriteAtomically(const fs::path& path, const std::string& contents) {
  const fs::path tmp = path.string() + ".tmp";
  { std::ofstream(tmp, std::ios::trunc) << contents; }
  std::error_code ec;
  fs::rename(tmp, path, ec);
}

// The router's --attention_workers_file: the addresses of the attention workers it may place on.
void WriteAttentionWorkersFile(const fs::path& path, const std::vector<std::string>& addresses) {
  WriteAtomically(path, "# written by moectl cluster (up, scale)\n" + absl::StrJoin(addresses, "\n") + "\n");
}

// Polls until the router at `router` has exactly `n` attention workers, every one polled ready (so
// requests go to each; a worker just added counts as ready only after the router's next load poll),
// up to 30 s.
bool WaitForRouterAttentionWorkers(const std::string& router, int n) {
  auto stub = v1::Generation::NewStub(grpc::CreateChannel(router, grpc::InsecureChannelCredentials()));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    v1::ModelInfo info;
    if (stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok() &&
        info.num_attention_workers() == n && info.num_ready_attention_workers() == n) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

void RunScale(const std::string& state_dir, int attention_workers, int expert_workers, double timeout_s) {
  if (attention_workers < 0 && expert_workers < 0)
    Fail("cluster scale", "give --attention-workers N (and/or --expert-workers N)");
  const fs::path state = state_dir.empty() ? fs::path(DefaultStateDir()) : fs::path(state_dir);
  std::ifstream in(state / "supervisor.pid");
  pid_t pid = 0;
  if (!(in >> pid) || pid <= 0 || kill(pid, 0) != 0)
    Fail("cluster scale", "no cluster is running (no live supervisor pid in " + state.string() + ")");
  const ScaleRequest request{
      .id = absl::StrCat(getpid(), "-", std::chrono::steady_clock::now().time_since_epoch().count()),
      .attention_workers = attention_workers,
      .expert_workers = expert_workers};
  std::error_code ec;
  fs::remove(state / "scale.result", ec);
  WriteAtomically(state / "scale.request", FormatScaleRequest(request));
  if (kill(pid, SIGUSR1) != 0)
    Fail("cluster scale", absl::StrCat("cannot signal the supervisor (pid ", pid, ")"));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream result(state / "scale.result");
    std::string id, outcome, message;
    if (std::getline(result, id) && id == request.id && std::getline(result, outcome)) {
      std::getline(result, message, '\0');
      if (outcome != "ok") Fail("cluster scale", message);
      std::cerr << "moectl cluster: " << message << std::flush;
      return;
    }
    if (kill(pid, 0) != 0) Fail("cluster scale", "the cluster stopped; logs in " + state.string());
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  Fail("cluster scale", absl::StrCat("no answer from the supervisor in ", timeout_s,
                                     " s (--timeout); logs in ", state.string()));
}

void RunUp(const ClusterFlags& flags) {
  const fs::path bin = BinaryDir();
  for (const char* name : {"moe-router", "moe-attention-worker", "moe-expert-worker"}) {
    if (!fs::exists(bin / name)) Fail("cluster up", absl::StrCat("cannot find ", (bin / name).string()));
  }
  // --device: refused here, before any child starts, when the spelling is wrong or this machine (or
  // build) has no such device; the workers check it again.
  absl::StatusOr<kernels::DeviceSpec> device = kernels::ParseDeviceSpec(flags.device, "--device");
  if (!device.ok()) Fail("cluster up", std::string(device.status().message()));
  if (absl::Status s = engine::CheckComputeDevice(*device, "--device"); !s.ok()) {
    Fail("cluster up", s.ToString());
  }
  // --transport: passed to every worker, which checks it the same way; refused here first.
  if (absl::Status s =
          transport::CheckTransportChoice(flags.transport, device->is_cuda(), transport::BuiltWithNccl());
      !s.ok()) {
    Fail("cluster up", s.ToString());
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

  // gRPC and /metrics of a local cluster listen on loopback only.
  const std::string host = "127.0.0.1";
  const int base = flags.port;
  // Ports: router `port`, attention workers port+1.., expert workers after them; metrics ports from
  // metrics_base, experts first, then attention workers, then the router.
  const int metrics_base = flags.metrics_port > 0 ? flags.metrics_port : base + 1000;
  const int num_children = flags.expert_workers + flags.attention_workers + 1;
  const int num_joinable = flags.joinable_expert_workers;
  if (flags.expert_workers % flags.expert_replicas != 0) {
    Fail("cluster up",
         absl::StrCat("--expert-replicas ", flags.expert_replicas, ": needs a multiple of ",
                      flags.expert_replicas, " expert workers, --expert-workers is ", flags.expert_workers));
  }
  if (base + flags.attention_workers + flags.expert_workers + num_joinable > 65535 ||
      metrics_base + num_children - 1 > 65535) {
    Fail("cluster up", "--port / --metrics-port: the cluster's ports would run past 65535");
  }
  {
    std::vector<std::string> busy;
    auto check = [&](int port, const std::string& what) {
      if (!PortIsFree(port)) busy.push_back(absl::StrCat(port, " (", what, ")"));
    };
    check(base, "router");
    if (flags.http_port > 0) check(flags.http_port, "router HTTP API");
    for (int i = 0; i < flags.attention_workers; ++i) check(base + 1 + i, absl::StrCat("attention-", i));
    for (int i = 0; i < flags.expert_workers + num_joinable; ++i)
      check(base + 1 + flags.attention_workers + i, absl::StrCat("expert-", i));
    for (int i = 0; i < num_children; ++i) check(metrics_base + i, "metrics");
    if (!busy.empty()) {
      Fail("cluster up", absl::StrCat("port", busy.size() > 1 ? "s " : " ", absl::StrJoin(busy, ", "),
                                      busy.size() > 1 ? " are" : " is",
                                      " already in use (another cluster?); choose free ones with --port (the "
                                      "router; workers take the ports after it) and --metrics-port"));
    }
  }

  // mTLS between the cluster's processes (docs/operations.md#security): a throwaway CA and one
  // certificate per role, made anew by every `up`, in <state>/tls.
  std::vector<std::string> tls_args;  // --insecure; else per role, see spawn
  rpc::TlsOptions tls_options;
  tls_options.insecure = flags.insecure;
  if (flags.insecure) {
    std::cerr << "moectl cluster: WARNING: --insecure: the cluster's internal gRPC hops are plaintext and "
                 "UNAUTHENTICATED; any local process can call its workers"
              << std::endl;
    tls_args = {"--insecure"};
  } else {
    const fs::path tls_dir = state / "tls";
    fs::create_directories(tls_dir, ec);
    if (ec) Fail("cluster up", "cannot create " + tls_dir.string() + ": " + ec.message());
    auto tls = rpc::MakeClusterCertificates(tls_dir.string(), "moectl local cluster CA");
    if (!tls.ok()) {
      Fail("cluster up", absl::StrCat("making the cluster's certificates: ", tls.status().message(),
                                      " (or pass --insecure)"));
    }
    tls_options = *tls;
  }

  if (flags.detach) {
    // The supervisor's stderr goes to supervisor.log; the caller sees it relayed from where it
    // stands now until the cluster is ready or has failed.
    const fs::path supervisor_log = state / "supervisor.log";
    std::error_code size_ec;
    const auto log_start = fs::exists(supervisor_log) ? fs::file_size(supervisor_log, size_ec) : 0;
    fs::remove(state / "router.address", ec);
    const pid_t pid = fork();
    if (pid < 0) Fail("cluster up", "fork failed");
    if (pid > 0) {
      std::ifstream log;
      std::streamoff offset = size_ec ? 0 : static_cast<std::streamoff>(log_start);
      auto relay = [&] {
        if (!log.is_open()) {
          log.open(supervisor_log);
          if (!log.is_open()) return;
        }
        log.clear();
        log.seekg(offset);
        std::string line;
        // Only whole lines: a line being written is picked up on the next pass.
        while (std::getline(log, line) && !log.eof()) {
          std::cerr << line << "\n";
          offset = log.tellg();
        }
        std::cerr << std::flush;
      };
      const fs::path ready = state / "router.address";
      const auto deadline =
          std::chrono::steady_clock::now() + std::chrono::duration<double>(flags.startup_timeout_s + 10);
      while (std::chrono::steady_clock::now() < deadline) {
        relay();
        if (fs::exists(ready)) {
          std::ifstream in(ready);
          std::string address;
          std::getline(in, address);
          relay();
          std::cout << address << std::endl;
          return;
        }
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
          relay();
          Fail("cluster up", "the cluster failed to start (see above); logs in " + state.string());
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      Fail("cluster up", "timed out waiting for the cluster; logs in " + state.string());
    }
    setsid();
    // Let go of the caller's terminal or pipe: a caller reading `up`'s output must see EOF when the
    // parent exits, not when the cluster stops.
    const int null_fd = open("/dev/null", O_RDONLY);
    const int log_fd = open(supervisor_log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
    if (log_fd >= 0) {
      dup2(log_fd, STDOUT_FILENO);
      dup2(log_fd, STDERR_FILENO);
    }
  }
  fs::remove(state / "router.address", ec);
  { std::ofstream(pid_file) << getpid() << "\n"; }

  // gRPC objects only now: gRPC must not be initialized before the fork above.
  auto worker_credentials = rpc::MakeClientCredentials(tls_options);
  if (!worker_credentials.ok()) Fail("cluster up", std::string(worker_credentials.status().message()));
  const rpc::ClientCredentials router_credentials;  // the public port is plaintext
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGUSR1, OnScaleSignal);  // a request during start-up is taken once the cluster is ready
  std::vector<std::string> attention, experts, joinable_experts;
  for (int i = 0; i < flags.attention_workers; ++i)
    attention.push_back(absl::StrCat(host, ":", base + 1 + i));
  for (int i = 0; i < flags.expert_workers; ++i) {
    experts.push_back(absl::StrCat(host, ":", base + 1 + flags.attention_workers + i));
  }
  for (int i = flags.expert_workers; i < flags.expert_workers + num_joinable; ++i)
    joinable_experts.push_back(absl::StrCat(host, ":", base + 1 + flags.attention_workers + i));
  int next_metrics = metrics_base;
  std::vector<Child> children;
  auto fail = [&](const std::string& message) {
    StopAll(children, std::chrono::seconds(5));
    fs::remove(pid_file, ec);
    Fail("cluster up", message + "logs in " + state.string());
  };
  auto spawn = [&](const std::string& name, const char* binary, std::vector<std::string> args,
                   const std::string& address) {
    const fs::path log = state / (name + ".log");
    args.push_back("--listen=" + address);
    args.push_back(absl::StrCat("--metrics_port=", next_metrics++));
    args.push_back("--metrics_listen=" + host);
    args.insert(args.end(), tls_args.begin(), tls_args.end());
    if (!flags.insecure) {
      // "expert-0" -> the expert-worker certificate, "attention-1" -> attention-worker, "router".
      const std::string role = name == "router" ? name : name.substr(0, name.find('-')) + "-worker";
      const rpc::TlsOptions own = rpc::RoleTlsOptions(tls_options, role);
      args.insert(args.end(),
                  {"--tls_ca=" + own.ca_file, "--tls_cert=" + own.cert_file, "--tls_key=" + own.key_file});
    }
    Child child{.name = name,
                .pid = Spawn(bin / binary, args, log),
                .binary = bin / binary,
                .args = args,
                .address = address,
                .log = log,
                .mtls = !flags.insecure && name != "router"};
    children.push_back(std::move(child));
  };
  std::cerr << "moectl cluster: starting " << flags.expert_workers << " expert and "
            << flags.attention_workers << " attention workers and the router (logs in " << state.string()
            << ")" << std::endl;
  for (int i = 0; i < flags.expert_workers; ++i) {
    spawn(absl::StrCat("expert-", i), "moe-expert-worker",
          {"--model=" + flags.model_dir, absl::StrCat("--rank=", i),
           absl::StrCat("--num_expert_workers=", flags.expert_workers),
           absl::StrCat("--expert_replicas=", flags.expert_replicas), "--transport=" + flags.transport,
           "--device=" + device->ToString(),
           absl::StrCat("--extra_expert_budget_bytes=", flags.extra_expert_budget_bytes)},
          experts[static_cast<size_t>(i)]);
  }
  // For `moectl cluster rebalance`: the running expert workers' addresses in rank order (the home ones,
  // then those `scale` added; rewritten by `scale`) and how to dial them.
  const fs::path expert_file = state / "expert_workers";
  WriteAtomically(expert_file, absl::StrJoin(experts, "\n") + "\n");
  WriteAtomically(state / "tls_mode", flags.insecure ? "insecure\n" : "mtls\n");
  // Attention worker `rank`'s flags (ranks are never reused: `scale` gives new workers new ones).
  auto attention_args = [&](int rank, int num_attention_workers) {
    std::vector<std::string> args = {"--model=" + flags.model_dir,
                                     absl::StrCat("--rank=", rank),
                                     absl::StrCat("--num_attention_workers=", num_attention_workers),
                                     "--expert_workers=" + absl::StrJoin(experts, ","),
                                     absl::StrCat("--expert_replicas=", flags.expert_replicas),
                                     absl::StrCat("--micro_batches=", flags.micro_batches),
                                     "--transport=" + flags.transport,
                                     "--device=" + device->ToString()};
    if (flags.kv_cache_gib > 0) args.push_back(absl::StrCat("--kv_cache_gib=", flags.kv_cache_gib));
    if (num_joinable > 0) args.push_back("--joinable_expert_workers=" + absl::StrJoin(joinable_experts, ","));
    return args;
  };
  for (int i = 0; i < flags.attention_workers; ++i) {
    spawn(absl::StrCat("attention-", i), "moe-attention-worker", attention_args(i, flags.attention_workers),
          attention[static_cast<size_t>(i)]);
  }
  for (const Child& c : children) std::ofstream(state / (c.name + ".pid")) << c.pid << "\n";
  const std::string router = absl::StrCat(host, ":", base);
  // The router re-reads its attention workers from a file that `cluster scale` rewrites.
  const fs::path attention_file = state / "attention_workers";
  WriteAttentionWorkersFile(attention_file, attention);
  std::vector<std::string> router_args = {"--model=" + flags.model_dir,
                                          "--attention_workers_file=" + attention_file.string(),
                                          "--expert_workers=" + absl::StrJoin(experts, ",")};
  if (flags.http_port > 0) router_args.push_back(absl::StrCat("--http_listen=", host, ":", flags.http_port));
  spawn("router", "moe-router", router_args, router);

  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::duration<double>(flags.startup_timeout_s);
  int num_ready = 0;
  while (num_ready < num_children) {
    if (stop_requested) fail("interrupted while starting; ");
    if (auto dead = ReapDead(children)) fail("during startup " + *dead);
    if (std::chrono::steady_clock::now() > deadline) {
      std::vector<std::string> waiting;
      for (const Child& c : children)
        if (!c.ready) waiting.push_back(c.name);
      fail(absl::StrCat("not ready after ", flags.startup_timeout_s, " s: ", absl::StrJoin(waiting, ", "),
                        " (--startup-timeout); "));
    }
    for (Child& c : children) {
      if (c.ready || !HealthServing(c.address, c.mtls ? *worker_credentials : router_credentials)) continue;
      c.ready = true;
      ++num_ready;
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::cerr << absl::StrFormat("moectl cluster: %s ready (%d/%d) after %.1f s", c.name, num_ready,
                                   num_children, seconds)
                << std::endl;
    }
    if (num_ready < num_children) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  std::ofstream(state / "router.pid") << children.back().pid << "\n";
  std::cerr << "moectl cluster: ready: router " << router << " serving, " << flags.attention_workers
            << " attention and " << flags.expert_workers << " expert workers (metrics ports " << metrics_base
            << "-" << metrics_base + num_children - 1 << "; logs in " << state.string() << ")"
            << (flags.detach ? "; `moectl cluster down` stops it" : "; Ctrl-C stops it") << std::endl;
  if (flags.http_port > 0) {
    std::cerr << "moectl cluster: OpenAI-compatible HTTP API at http://" << host << ":" << flags.http_port
              << "/v1" << std::endl;
  }
  { std::ofstream(state / "router.address") << router << "\n"; }
  if (!flags.detach) std::cout << router << std::endl;
  // `moectl cluster scale`: new attention workers get fresh ranks and the first free ports after the
  // cluster's own; removal takes the newest first.
  int next_attention_rank = flags.attention_workers;
  int next_port = base + 1 + flags.attention_workers + flags.expert_workers + num_joinable;
  auto attention_children = [&] {
    std::vector<size_t> out;
    for (size_t i = 0; i < children.size(); ++i)
      if (children[i].name.starts_with("attention-")) out.push_back(i);
    return out;
  };
  // Waits until the child just spawned as children.back() serves; on failure stops it, forgets it
  // and says why with the tail of its log.
  auto await_serving = [&](const std::string& name, const std::string& address) -> absl::Status {
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(flags.startup_timeout_s);
    while (!HealthServing(address, *worker_credentials)) {
      Child& c = children.back();
      int status = 0;
      const bool dead = waitpid(c.pid, &status, WNOHANG) == c.pid;
      if (dead || std::chrono::steady_clock::now() > deadline || stop_requested) {
        if (!dead) {
          std::vector<Child> one = {c};
          StopAll(one, std::chrono::seconds(5));
        }
        const std::string tail = LogTail(c.log, kLogTailLines);
        children.pop_back();
        fs::remove(state / (name + ".pid"), ec);
        return absl::UnavailableError(absl::StrCat(name, dead ? " exited" : " was not ready in time",
                                                   " while starting; the last lines of its log:\n", tail));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    children.back().ready = true;
    return absl::OkStatus();
  };
  // Expert workers added by `scale` (docs/operations.md#scaling): ranks expert_workers.. on the
  // reserved ports, each holding shard rank mod S, used by the attention workers as extra copies
  // of that shard's experts once a placement version names them.
  uint64_t placement_version = 0;
  std::vector<std::pair<int, int>> placement_extras;  // (expert, worker rank) of the version in use
  auto joined_children = [&] {
    std::vector<size_t> out;
    for (size_t i = 0; i < children.size(); ++i) {
      int rank = 0;
      if (children[i].name.starts_with("expert-") &&
          absl::SimpleAtoi(children[i].name.substr(std::strlen("expert-")), &rank) &&
          rank >= flags.expert_workers)
        out.push_back(i);
    }
    return out;
  };
  // The highest placement version an attention worker uses: `moectl cluster rebalance` may have gone
  // past the supervisor's own, and a version not above the one in use is refused.
  auto placement_version_in_use = [&] {
    uint64_t version = placement_version;
    for (size_t i : attention_children()) {
      auto stub = v1::AttentionWorker::NewStub(worker_credentials->CreateChannel(children[i].address));
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      v1::WorkerLoad load;
      if (stub->GetLoad(&ctx, v1::GetLoadRequest(), &load).ok())
        version = std::max<uint64_t>(version, load.expert_placement_version());
    }
    return version;
  };
  // SetExpertPlacement(extras) on the attention workers `which` (indices into children), each a
  // compare-and-set on the version read from it just before (replaces_version), so a concurrent
  // `moectl cluster rebalance` never leaves two placements under one version number. `fixed` 0: a new
  // version above every attention worker's (and the supervisor's); otherwise that version (the
  // supervisor's placement in use, for a new attention worker; one already on it or past it is left
  // alone). A worker that has not connected a named expert worker yet (FAILED_PRECONDITION) or cannot
  // be reached is tried again, for up to 90 s; when another writer switched a worker since it was read
  // (ABORTED, or a version at or above this one that this call did not set: also a try that timed out
  // but switched), the pass starts over with a new version, so every worker ends on one version that
  // only this placement has. Each try waits for the channel to connect (wait_for_ready) but for at most
  // 15 s, so one slow connection attempt (a loaded machine, a sanitizer build) cannot use up the whole
  // window. Returns the version switched to.
  auto set_placement = [&](const std::vector<size_t>& which, uint64_t fixed,
                           const std::vector<std::pair<int, int>>& extras) -> absl::StatusOr<uint64_t> {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
    uint64_t version = 0;
    std::set<size_t> switched;  // the workers this call switched to `version`
    for (int pass = 0;; ++pass) {
      if (pass > 0) std::this_thread::sleep_for(std::chrono::milliseconds(200));
      if (version == 0) {
        version = fixed > 0 ? fixed : placement_version_in_use() + 1;
        switched.clear();
      }
      grpc::Status failed = grpc::Status::OK;
      std::string failed_name;
      bool superseded = false;
      for (size_t i : which) {
        const Child& c = children[i];
        auto stub = v1::AttentionWorker::NewStub(worker_credentials->CreateChannel(c.address));
        v1::WorkerLoad load;
        {
          grpc::ClientContext ctx;
          ctx.set_wait_for_ready(true);
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(15));
          failed = stub->GetLoad(&ctx, v1::GetLoadRequest(), &load);
        }
        if (!failed.ok()) {
          failed_name = c.name;
          break;
        }
        const uint64_t in_use = load.expert_placement_version();
        if (fixed > 0 ? in_use >= fixed : (switched.contains(i) && in_use == version)) continue;
        if (fixed == 0 && in_use >= version) {
          superseded = true;
          break;
        }
        grpc::ClientContext ctx;
        ctx.set_wait_for_ready(true);
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(15));
        v1::SetExpertPlacementRequest request;
        request.set_placement_version(version);
        request.set_replaces_version(in_use);
        for (const auto& [expert, worker] : extras) {
          v1::ExtraExpertCopy* copy = request.add_extras();
          copy->set_expert(expert);
          copy->set_worker(worker);
        }
        v1::SetExpertPlacementResponse response;
        failed = stub->SetExpertPlacement(&ctx, request, &response);
        if (!failed.ok()) {
          failed_name = c.name;
          superseded = failed.error_code() == grpc::StatusCode::ABORTED;
          break;
        }
        switched.insert(i);
      }
      if (failed.ok() && !superseded) return version;
      if (superseded) {
        std::cerr << "moectl cluster: scale: another writer switched the placement of an attention worker "
                     "(version "
                  << version << " taken or passed"
                  << (failed.ok() ? std::string() : ": " + failed.error_message())
                  << "); switching every attention worker again" << std::endl;
        if (fixed == 0) version = 0;
      }
      const bool retry = superseded || failed.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
                         failed.error_code() == grpc::StatusCode::UNAVAILABLE ||
                         failed.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
      if (!retry || std::chrono::steady_clock::now() > deadline || stop_requested) {
        if (failed.ok()) {
          return absl::AbortedError(
              "another writer kept switching the attention workers' expert placement for 90 s; try again");
        }
        return absl::UnavailableError(absl::StrCat(failed_name, " refused expert placement version ", version,
                                                   ": ", failed.error_message(), "; see ", failed_name,
                                                   ".log"));
      }
    }
  };
  // <state>/expert_workers: the home workers, then every added one still running, by rank.
  // `unlisted`: workers running that are not listed (they leave the placement next, or join it).
  auto write_expert_file = [&](const std::vector<Child>& unlisted = {}) {
    std::vector<std::string> running = experts;
    std::vector<std::pair<int, std::string>> added;
    for (size_t i : joined_children()) {
      int rank = 0;
      if (std::any_of(unlisted.begin(), unlisted.end(),
                      [&](const Child& c) { return c.name == children[i].name; }))
        continue;
      if (absl::SimpleAtoi(children[i].name.substr(std::strlen("expert-")), &rank))
        added.emplace_back(rank, children[i].address);
    }
    std::sort(added.begin(), added.end());
    for (const auto& [rank, address] : added) running.push_back(address);
    WriteAtomically(expert_file, absl::StrJoin(running, "\n") + "\n");
  };
  auto scale_experts = [&](int want) -> absl::StatusOr<std::string> {
    const int home = flags.expert_workers;
    std::vector<size_t> joined = joined_children();
    const int have = home + static_cast<int>(joined.size());
    if (want < home) {
      const int shards = home / flags.expert_replicas;
      return absl::FailedPreconditionError(absl::StrCat(
          "--expert-workers ", want, ": below the cluster's ", home,
          " home expert workers; only workers added by `scale` can be removed. ",
          flags.expert_replicas == 1
              ? absl::StrCat("Each of the ", shards,
                             " shards has one copy: removing one would remove the last "
                             "copy of its experts")
              : absl::StrCat(
                    "The home shard map (", shards, " shards x ", flags.expert_replicas,
                    " replicas) is fixed at start; a stopped home worker hands over (SIGTERM) and is "
                    "restarted")));
    }
    if (want > home + num_joinable) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--expert-workers ", want, ": at most ", home + num_joinable, " (", home, " home + ", num_joinable,
          " joinable); start the cluster with `cluster up --joinable-expert-workers J` to reserve more"));
    }
    if (want == have) return absl::StrCat("expert workers: ", have, " (unchanged)\n");
    std::vector<std::pair<int, int>> extras;
    auto add_copies = [&](int rank, const std::string& address) -> absl::Status {
      auto stub = v1::ExpertControl::NewStub(worker_credentials->CreateChannel(address));
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      v1::ExpertWorkerInfo info;
      const grpc::Status status = stub->GetInfo(&ctx, v1::GetInfoRequest(), &info);
      if (!status.ok()) {
        return absl::UnavailableError(absl::StrCat("expert-", rank, ": GetInfo: ", status.error_message()));
      }
      for (int e = info.first_expert(); e < info.first_expert() + info.num_experts(); ++e)
        extras.emplace_back(e, rank);
      return absl::OkStatus();
    };
    std::vector<Child> leaving;
    for (int rank = home; rank < want; ++rank) {
      const std::string name = absl::StrCat("expert-", rank);
      const std::string address = joinable_experts[static_cast<size_t>(rank - home)];
      if (rank >= have) {
        while (!PortIsFree(next_metrics)) ++next_metrics;
        spawn(name, "moe-expert-worker",
              {"--model=" + flags.model_dir, absl::StrCat("--rank=", rank), "--joinable",
               absl::StrCat("--num_expert_workers=", home),
               absl::StrCat("--expert_replicas=", flags.expert_replicas), "--transport=" + flags.transport,
               "--device=" + device->ToString(),
               absl::StrCat("--extra_expert_budget_bytes=", flags.extra_expert_budget_bytes)},
              address);
        std::ofstream(state / (name + ".pid")) << children.back().pid << "\n";
        std::cerr << "moectl cluster: scale: starting " << name << " on " << address << std::endl;
        if (absl::Status s = await_serving(name, address); !s.ok()) return s;
        std::cerr << "moectl cluster: scale: " << name << " ready" << std::endl;
      }
      if (absl::Status s = add_copies(rank, address); !s.ok()) return s;
    }
    for (size_t i : joined) {
      int rank = 0;
      if (absl::SimpleAtoi(children[i].name.substr(std::strlen("expert-")), &rank) && rank >= want)
        leaving.push_back(children[i]);
    }
    // Joining: the attention workers connect the new workers and switch once each is connected and
    // holds its experts. Leaving: a placement without them first, then SIGTERM (they drain).
    // The expert workers' file without the leaving workers first (and the joining ones only after the
    // switch, once the attention workers have connected them): a `cluster rebalance` look that sees
    // the switch sees the new list too, as it checks that the list did not change during the look.
    std::vector<Child> unlisted = leaving;
    for (size_t i : joined_children()) {
      int rank = 0;
      if (absl::SimpleAtoi(children[i].name.substr(std::strlen("expert-")), &rank) && rank >= have)
        unlisted.push_back(children[i]);
    }
    write_expert_file(unlisted);
    absl::StatusOr<uint64_t> version = set_placement(attention_children(), 0, extras);
    if (!version.ok()) return version.status();
    placement_version = *version;
    placement_extras = extras;
    for (const Child& c : leaving) {
      std::erase_if(children, [&](const Child& x) { return x.name == c.name; });
      fs::remove(state / (c.name + ".pid"), ec);
      std::cerr << "moectl cluster: scale: stopping " << c.name << " (out of the placement; SIGTERM)"
                << std::endl;
    }
    write_expert_file();
    StopAll(leaving, std::chrono::seconds(30));
    return absl::StrCat("expert workers: ", want, " (were ", have, "; ", home, " home), placement version ",
                        placement_version, "\n");
  };
  auto scale = [&](const ScaleRequest& r) -> absl::StatusOr<std::string> {
    std::string expert_outcome;
    if (r.expert_workers >= 0) {
      absl::StatusOr<std::string> outcome = scale_experts(r.expert_workers);
      write_expert_file();  // also after a failure: a worker started before it stays up
      if (!outcome.ok()) return outcome.status();
      if (r.attention_workers < 0) return outcome;
      expert_outcome = *outcome;
    }
    std::vector<size_t> current = attention_children();
    const int have = static_cast<int>(current.size());
    const int want = r.attention_workers < 0 ? have : r.attention_workers;
    if (want < 1 || want > 64)
      return absl::InvalidArgumentError(absl::StrCat("--attention-workers ", want, ": must be in [1, 64]"));
    std::vector<std::string> addresses;
    for (size_t i : current) addresses.push_back(children[i].address);
    for (int k = have; k < want; ++k) {
      const int rank = next_attention_rank++;
      while (!PortIsFree(next_port) || next_port == flags.http_port) ++next_port;
      const std::string address = absl::StrCat(host, ":", next_port++);
      while (!PortIsFree(next_metrics)) ++next_metrics;
      const std::string name = absl::StrCat("attention-", rank);
      spawn(name, "moe-attention-worker", attention_args(rank, rank + 1), address);
      std::ofstream(state / (name + ".pid")) << children.back().pid << "\n";
      std::cerr << "moectl cluster: scale: starting " << name << " on " << address << std::endl;
      if (absl::Status s = await_serving(name, address); !s.ok()) return s;
      // A new attention worker starts on the home shards: give it the placement in use, if it is the
      // supervisor's. One `moectl cluster rebalance` made is not known here: the worker stays on the
      // home shards (always safe) until the balancer applies a plan again (`rebalance --watch` does
      // at its next look, seeing a worker on another version).
      if (placement_version > 0 && placement_version_in_use() == placement_version) {
        if (absl::StatusOr<uint64_t> s =
                set_placement({children.size() - 1}, placement_version, placement_extras);
            !s.ok())
          return s.status();
      }
      addresses.push_back(address);
      std::cerr << "moectl cluster: scale: " << name << " ready" << std::endl;
    }
    std::vector<Child> leaving;
    for (int k = want; k < have; ++k) leaving.push_back(children[current[static_cast<size_t>(k)]]);
    addresses.resize(static_cast<size_t>(want));
    // The router first (no new request goes to a leaving worker), then SIGTERM: each hands its open
    // streams back to the router, which migrates them.
    WriteAttentionWorkersFile(attention_file, addresses);
    if (!WaitForRouterAttentionWorkers(router, want)) {
      return absl::DeadlineExceededError(absl::StrCat("the router did not take up ", want,
                                                      " attention workers within 30 s; see router.log"));
    }
    for (const Child& c : leaving) {
      std::erase_if(children, [&](const Child& x) { return x.name == c.name; });
      fs::remove(state / (c.name + ".pid"), ec);
      std::cerr << "moectl cluster: scale: stopping " << c.name << " (SIGTERM: its streams migrate)"
                << std::endl;
    }
    StopAll(leaving, std::chrono::seconds(30));
    return absl::StrCat(expert_outcome, "attention workers: ", want, " (were ", have,
                        "): ", absl::StrJoin(addresses, ", "), "\n");
  };

  // A child that dies now is started again after a backoff (1 s, doubling, at most 10 s), at most
  // --max-restarts times each; past that the whole cluster stops.
  std::optional<std::string> died;
  while (!stop_requested) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (scale_requested.exchange(false)) {
      const std::optional<ScaleRequest> request = ReadScaleRequest(state / "scale.request");
      absl::StatusOr<std::string> outcome =
          request.has_value()
              ? scale(*request)
              : absl::InvalidArgumentError("unreadable " + (state / "scale.request").string());
      WriteAtomically(
          state / "scale.result",
          absl::StrCat(request.has_value() ? request->id : "", "\n", outcome.ok() ? "ok" : "error", "\n",
                       outcome.ok() ? *outcome : std::string(outcome.status().message())));
      std::cerr << "moectl cluster: scale: "
                << (outcome.ok() ? *outcome : std::string(outcome.status().message()) + "\n") << std::flush;
    }
    if (std::optional<std::string> dead = ReapDead(children)) {
      Child* c = nullptr;
      for (Child& candidate : children) {
        if (candidate.pid <= 0 && !candidate.restart_at.has_value()) c = &candidate;
      }
      if (c == nullptr || c->restarts >= flags.max_restarts) {
        died = absl::StrCat(*dead, "(restarted ", c == nullptr ? 0 : c->restarts, " times, --max-restarts ",
                            flags.max_restarts, "); ");
        break;
      }
      const int backoff_s = std::min(10, 1 << std::min(c->restarts, 4));
      c->restart_at = std::chrono::steady_clock::now() + std::chrono::seconds(backoff_s);
      std::cerr << "moectl cluster: " << *dead << "moectl cluster: restarting " << c->name << " in "
                << backoff_s << " s (restart " << c->restarts + 1 << " of at most " << flags.max_restarts
                << ")" << std::endl;
    }
    for (Child& c : children) {
      if (!c.restart_at.has_value() || std::chrono::steady_clock::now() < *c.restart_at) continue;
      c.restart_at.reset();
      ++c.restarts;
      c.pid = Spawn(c.binary, c.args, c.log);
      std::ofstream(state / (c.name + ".pid")) << c.pid << "\n";
      if (c.name == "router") std::ofstream(state / "router.pid") << c.pid << "\n";
      std::cerr << "moectl cluster: " << c.name << " restarted (pid " << c.pid << ")" << std::endl;
    }
  }
  StopAll(children, std::chrono::seconds(10));
  fs::remove(pid_file, ec);
  fs::remove(state / "router.address", ec);
  if (died) Fail("cluster up", *died + "the cluster was stopped");
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
  up->add_option("--expert-replicas", flags->expert_replicas,
                 "Copies of each expert shard (divides --expert-workers): a round fails over to another copy "
                 "when an expert worker dies")
      ->check(CLI::Range(1, 128));
  up->add_option(
        "--joinable-expert-workers", flags->joinable_expert_workers,
        "Expert workers `cluster scale --expert-workers` may add later (their ports are reserved; each "
        "holds shard rank mod S as extra copies)")
      ->check(CLI::Range(0, 64));
  up->add_option("--micro-batches", flags->micro_batches,
                 "1 or 2: attention workers run a step as two micro-batches whose attention and expert "
                 "rounds overlap (ping-pong); outputs are identical")
      ->check(CLI::Range(1, 2));
  up->add_option("--port", flags->port, "Router port; workers use the ports after it")
      ->check(CLI::Range(1, 65000));
  up->add_option("--metrics-port", flags->metrics_port, "First metrics port (default: port + 1000)")
      ->check(CLI::Range(0, 65000));
  up->add_option("--http-port", flags->http_port,
                 "Also serve the OpenAI-compatible HTTP API on 127.0.0.1:PORT (docs/http-api.md)")
      ->check(CLI::Range(1, 65535));
  up->add_option("--state-dir", flags->state_dir, "Where logs and the pid file go");
  up->add_option("--startup-timeout", flags->startup_timeout_s, "Seconds to wait for readiness");
  up->add_option("--kv-cache-gib", flags->kv_cache_gib,
                 "KV cache of each attention worker in GiB (default: the worker's, 8)")
      ->check(CLI::PositiveNumber);
  up->add_option("--max-restarts", flags->max_restarts,
                 "Times a child that dies after start-up is restarted (backoff 1 s doubling to 10 s) before "
                 "the cluster stops (default 3)")
      ->check(CLI::Range(0, 1000));
  up->add_option_function<std::string>(
      "--extra-expert-budget",
      [flags](const std::string& value) {
        absl::StatusOr<int64_t> bytes = ParseByteSize(value);
        if (!bytes.ok())
          Fail("cluster up", "--extra-expert-budget: " + std::string(bytes.status().message()));
        flags->extra_expert_budget_bytes = *bytes;
      },
      "Bytes each expert worker may hold of extra expert copies for `moectl cluster rebalance` "
      "(BYTES, or a number with KiB/MiB/GiB; default 0: none)");
  up->add_option("--transport", flags->transport,
                 "Data plane: ucx (default), or nccl (--device cuda, a build with NCCL: "
                 "docs/data-plane.md#nccl-rendezvous); passed to every worker");
  up->add_option("--device", flags->device,
                 "Where every worker computes: cpu (default), cuda or cuda:N (passed to each worker's "
                 "--device)");
  up->add_flag("--detach", flags->detach, "Run in the background; stop with `moectl cluster down`");
  up->add_flag("--insecure", flags->insecure,
               "No mTLS between the cluster's processes (default: a throwaway CA in <state-dir>/tls)");
  up->callback([flags] { RunUp(*flags); });
  auto state_dir = std::make_shared<std::string>();
  RegisterClusterRebalanceCommand(*cluster);
  CLI::App* down = cluster->add_subcommand("down", "Stop a cluster started with --detach");
  down->add_option("--state-dir", *state_dir, "The state dir given to `up`");
  down->callback([state_dir] { RunDown(*state_dir); });

  struct ScaleFlags {
    std::string state_dir;
    int attention_workers = -1;
    int expert_workers = -1;
    double timeout_s = 600;
  };
  auto scale_flags = std::make_shared<ScaleFlags>();
  CLI::App* scale = cluster->add_subcommand(
      "scale", "Add or remove attention workers of a running cluster without failing a request");
  scale
      ->add_option("--attention-workers", scale_flags->attention_workers,
                   "Attention workers wanted: new ones start and join the router once ready; removed ones "
                   "(the newest first) leave the router, then drain (SIGTERM: their streams migrate)")
      ->check(CLI::Range(1, 64));
  scale
      ->add_option("--expert-workers", scale_flags->expert_workers,
                   "Expert workers wanted: between the home count and home + `up --joinable-expert-workers`; "
                   "new ones start and join the placement, removed ones (the newest first) leave it, then "
                   "drain (SIGTERM)")
      ->check(CLI::Range(1, 128));
  scale->add_option("--state-dir", scale_flags->state_dir, "The state dir given to `up`");
  scale->add_option("--timeout", scale_flags->timeout_s, "Seconds to wait for the supervisor's answer")
      ->check(CLI::PositiveNumber);
  scale->callback([scale_flags] {
    RunScale(scale_flags->state_dir, scale_flags->attention_workers, scale_flags->expert_workers,
             scale_flags->timeout_s);
  });
}

}  // namespace moe::moectl
