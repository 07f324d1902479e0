#include "tests/services/process_helper.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "absl/base/const_init.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
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

namespace {

constexpr int kFirstTestPort = 10000;
constexpr int kNumPortBlocks = (32000 - kFirstTestPort) / kPortBlockSize;
constexpr char kPortLockDir[] = "/tmp/moe-test-ports";

bool PortBindable(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool free = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return free;
}

// The fd holding the exclusive flock of `block`, or -1 if another process holds it.
int LockBlock(int block) {
  const std::string path = absl::StrCat(kPortLockDir, "/", block, ".lock");
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  if (fd < 0) return -1;
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

PortReservation::~PortReservation() {
  for (int fd : lock_fds_) close(fd);
}

absl::StatusOr<std::unique_ptr<PortReservation>> ReservePorts(int count, int offset) {
  if (count < 1 || count > kPortBlockSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("ReservePorts: count ", count, " outside [1, ", kPortBlockSize, "]"));
  }
  if (offset < 0 || offset % kPortBlockSize != 0 || offset / kPortBlockSize >= kNumPortBlocks) {
    return absl::InvalidArgumentError(
        absl::StrCat("ReservePorts: offset ", offset, " is not a multiple of ", kPortBlockSize));
  }
  mkdir(kPortLockDir, 0777);
  chmod(kPortLockDir, 0777);  // shared by every user's tests on the machine
  const int offset_blocks = offset / kPortBlockSize;
  const int usable_blocks = kNumPortBlocks - offset_blocks;
  // Start at a random block: parallel processes then rarely contend for the same lock file.
  std::mt19937 rng(static_cast<unsigned>(getpid()) * 2654435761u ^
                   static_cast<unsigned>(std::chrono::steady_clock::now().time_since_epoch().count()));
  const int first = static_cast<int>(rng() % static_cast<unsigned>(usable_blocks));
  for (int i = 0; i < usable_blocks; ++i) {
    const int block = (first + i) % usable_blocks;
    const int base = kFirstTestPort + block * kPortBlockSize;
    std::vector<int> fds;
    for (int b : offset > 0 ? std::vector<int>{block, block + offset_blocks} : std::vector<int>{block}) {
      const int fd = LockBlock(b);
      if (fd < 0) break;
      fds.push_back(fd);
    }
    bool ok = fds.size() == (offset > 0 ? 2u : 1u);
    for (int p = 0; ok && p < count; ++p)
      ok = PortBindable(base + p) && (offset == 0 || PortBindable(base + offset + p));
    if (ok) return std::unique_ptr<PortReservation>(new PortReservation(base, std::move(fds)));
    for (int fd : fds) close(fd);
  }
  return absl::ResourceExhaustedError(
      absl::StrCat("no free block of ", count, " test ports (locks in ", kPortLockDir, ")"));
}

int FreePort() {
  static absl::Mutex mu(absl::kConstInit);
  // Reservations are never released: ports handed out stay this process's until it exits.
  static std::vector<std::unique_ptr<PortReservation>>* blocks =
      new std::vector<std::unique_ptr<PortReservation>>();
  static int next = kPortBlockSize;
  absl::MutexLock lock(&mu);
  for (int attempt = 0; attempt < 4 * kPortBlockSize; ++attempt) {
    if (next == kPortBlockSize) {
      auto block = ReservePorts(1);
      if (!block.ok()) return 0;
      blocks->push_back(*std::move(block));
      next = 0;
    }
    const int port = blocks->back()->base() + next++;
    if (PortBindable(port)) return port;
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
                                                           const rpc::ClientCredentials& credentials,
                                                           std::string* error) {
  auto stub = grpc::health::v1::Health::NewStub(credentials.CreateChannel(address));
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

bool IsServing(const std::string& address, const std::string& service, absl::Duration timeout,
               const rpc::ClientCredentials& credentials) {
  std::string error;
  return Check(address, service, timeout, credentials, &error) ==
         grpc::health::v1::HealthCheckResponse::SERVING;
}

absl::Status WaitForHealth(const std::string& address, const std::string& service, bool serving,
                           absl::Time deadline, const rpc::ClientCredentials& credentials) {
  std::string last;
  while (true) {
    const absl::Duration left = std::max(deadline - absl::Now(), absl::Milliseconds(50));
    const bool is_serving = Check(address, service, std::min(left, absl::Seconds(1)), credentials, &last) ==
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
