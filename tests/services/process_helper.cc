#include "tests/services/process_helper.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace moe::testing {

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(const std::string& binary,
                                                                  const std::vector<std::string>& args,
                                                                  const std::string& log_path) {
  // Everything the child needs is prepared before fork: only async-signal-safe calls after it.
  std::vector<std::string> storage;
  storage.push_back(binary);
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& arg : storage) argv.push_back(arg.data());
  argv.push_back(nullptr);
  int log_fd = -1;
  if (!log_path.empty()) {
    log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) return absl::InternalError(absl::StrCat("cannot open ", log_path));
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    if (log_fd >= 0) close(log_fd);
    return absl::InternalError("fork failed");
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(126);  // the parent died before prctl
    // The test may block signals (gtest does not, but a caller might): children start clean.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (log_fd >= 0) {
      dup2(log_fd, STDOUT_FILENO);
      dup2(log_fd, STDERR_FILENO);
    }
    execv(argv[0], argv.data());
    _exit(127);
  }
  if (log_fd >= 0) close(log_fd);
  return std::unique_ptr<ChildProcess>(new ChildProcess(pid, log_path));
}

ChildProcess::~ChildProcess() {
  if (exit_status_.has_value()) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
}

void ChildProcess::Signal(int signal) {
  if (!exit_status_.has_value()) kill(pid_, signal);
}

std::optional<int> ChildProcess::Wait(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!exit_status_.has_value()) {
    int status = 0;
    const pid_t done = waitpid(pid_, &status, WNOHANG);
    if (done == pid_) {
      exit_status_ = status;
      break;
    }
    if (absl::Now() >= deadline) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return exit_status_;
}

bool ChildProcess::Running() {
  return !Wait(absl::ZeroDuration()).has_value();
}

std::string ChildProcess::Log() const {
  if (log_path_.empty()) return "";
  std::ifstream in(log_path_);
  std::stringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

int FreePort() {
  // Below the kernel's ephemeral range (ip_local_port_range, 32768-60999 by default): a port handed
  // out by bind(0) is ephemeral, so once a test frees it (kill -9 of a worker it then restarts on
  // the same port), any outgoing connection of a parallel test may take it as its source port.
  static std::mt19937 rng(static_cast<unsigned>(getpid()) * 2654435761u ^
                          static_cast<unsigned>(std::chrono::steady_clock::now().time_since_epoch().count()));
  for (int attempt = 0; attempt < 500; ++attempt) {
    const int port = 10000 + static_cast<int>(rng() % 22000);  // [10000, 32000)
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    const bool free = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    close(fd);
    if (free) return port;
  }
  return 0;
}

std::string LocalAddress(int port) {
  return absl::StrCat("127.0.0.1:", port);
}

std::string BinaryPath(const std::string& name) {
  if (const char* dir = std::getenv("MOE_BINARY_DIR"); dir != nullptr && *dir != '\0') {
    return absl::StrCat(dir, "/bin/", name);
  }
#ifdef MOE_BINARY_DIR_DEFAULT
  return absl::StrCat(MOE_BINARY_DIR_DEFAULT, "/bin/", name);
#else
  return absl::StrCat("build/bin/", name);
#endif
}

namespace {

grpc::health::v1::HealthCheckResponse::ServingStatus Check(const std::string& address,
                                                           const std::string& service, absl::Duration timeout,
                                                           std::string* error) {
  auto stub =
      grpc::health::v1::Health::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) {
    *error = status.error_message();
    return grpc::health::v1::HealthCheckResponse::UNKNOWN;
  }
  *error = grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
  return response.status();
}

}  // namespace

bool IsServing(const std::string& address, const std::string& service, absl::Duration timeout) {
  std::string error;
  return Check(address, service, timeout, &error) == grpc::health::v1::HealthCheckResponse::SERVING;
}

absl::Status WaitForHealth(const std::string& address, const std::string& service, bool serving,
                           absl::Time deadline) {
  std::string last;
  while (true) {
    const absl::Duration left = std::max(deadline - absl::Now(), absl::Milliseconds(50));
    const bool is_serving = Check(address, service, std::min(left, absl::Seconds(1)), &last) ==
                            grpc::health::v1::HealthCheckResponse::SERVING;
    if (is_serving == serving) return absl::OkStatus();
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat("health '", service, "' of ", address, " is ", last,
                                                      ", waited for ", serving ? "SERVING" : "not SERVING"));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

}  // namespace moe::testing
