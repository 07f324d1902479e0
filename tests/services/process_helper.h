// Helpers for integration tests that start real service processes (moe-router, moe-attention-worker,
// moe-expert-worker, ...) on 127.0.0.1. Reusable by every service's tests (library moe_test_process).
//
//   auto port = moe::testing::FreePort();
//   auto child = moe::testing::ChildProcess::Start(moe::testing::BinaryPath("moe-expert-worker"),
//                                                  {"--model", dir, "--listen", "127.0.0.1:" + ...});
//   ASSERT_OK(moe::testing::WaitForHealth(address, "readiness", true, absl::Now() + absl::Seconds(60)));
//   ... the destructor SIGKILLs and reaps the child, so a failing test never leaks processes.
//
// Thread safety: a ChildProcess is used from one thread; the free functions are thread-safe.
#ifndef MOE_TESTS_SERVICES_PROCESS_HELPER_H_
#define MOE_TESTS_SERVICES_PROCESS_HELPER_H_

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/rpc/tls.h"

namespace moe::testing {

class ChildProcess {
 public:
  // fork+exec `binary` with `args` (argv[1..]). stdout and stderr go to `log_path` if non-empty
  // (appended), else they are inherited. The child gets SIGKILL if the test process dies
  // (PR_SET_PDEATHSIG). INTERNAL if fork fails; a binary that cannot be exec'd exits 127.
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(const std::string& binary,
                                                             const std::vector<std::string>& args,
                                                             const std::string& log_path = "");
  // SIGKILL and reap, unless already reaped.
  ~ChildProcess();

  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  // Sends `signal` (no-op once reaped).
  void Signal(int signal);
  // Waits for the child to exit, up to `timeout`. Returns its wait status (as from waitpid), or
  // nullopt if it is still running at the deadline.
  std::optional<int> Wait(absl::Duration timeout);
  // True while not reaped and not exited.
  bool Running();
  // Everything the child wrote to `log_path` so far (empty without a log).
  std::string Log() const;

 private:
  ChildProcess(pid_t pid, std::string log_path) : pid_(pid), log_path_(std::move(log_path)) {}
  pid_t pid_;
  std::string log_path_;
  std::optional<int> exit_status_;
};

// Ports for test servers, below the kernel's ephemeral range (32768+) so that a port a test frees
// and binds again (a restarted worker) is not taken meanwhile by some connection's source port.
// [10000, 32000) is cut into blocks of kPortBlockSize; a process reserves a block by holding an
// flock on /tmp/moe-test-ports/<block>.lock, so tests running in parallel (ctest -j, several build
// trees on one machine) never hand out the same port, and nothing needs a retry. The lock goes with
// the reservation, or with the process.
inline constexpr int kPortBlockSize = 40;

class PortReservation {
 public:
  ~PortReservation();
  PortReservation(const PortReservation&) = delete;
  PortReservation& operator=(const PortReservation&) = delete;

  // The first reserved port: [base(), base() + count) is reserved, and so is
  // [base() + offset, base() + offset + count) if an offset was asked for.
  int base() const { return base_; }

 private:
  friend absl::StatusOr<std::unique_ptr<PortReservation>> ReservePorts(int count, int offset);
  PortReservation(int base, std::vector<int> lock_fds) : base_(base), lock_fds_(std::move(lock_fds)) {}
  int base_;
  std::vector<int> lock_fds_;
};

// Reserves `count` consecutive ports (1 <= count <= kPortBlockSize), each bindable on 127.0.0.1 now,
// and, when `offset` > 0 (a multiple of kPortBlockSize), the `count` ports from base + offset too
// (moectl cluster up puts metrics ports at port + 1000). RESOURCE_EXHAUSTED if no block is free;
// INVALID_ARGUMENT for a bad count or offset.
absl::StatusOr<std::unique_ptr<PortReservation>> ReservePorts(int count, int offset = 0);

// A TCP port on 127.0.0.1, bindable now, from a block this process reserved (see above); 0 if none
// can be reserved. Thread-safe; successive calls return different ports.
int FreePort();

// "127.0.0.1:<port>".
std::string LocalAddress(int port);

// Path of a built binary: $MOE_BINARY_DIR/bin/<name>, else <MOE_BINARY_DIR_DEFAULT>/bin/<name>
// (compiled into tests by moe_add_test), else build/bin/<name>.
std::string BinaryPath(const std::string& name);

// Polls grpc.health.v1.Health/Check of `service` ("readiness", "startup", "liveness" or "") at
// `address` until its status is SERVING (`serving`) or anything else (`!serving`), or the deadline.
// DEADLINE_EXCEEDED naming the last status seen. Poll interval 20 ms.
// `credentials`: how to dial (mTLS for a worker of a secure cluster; default plaintext).
absl::Status WaitForHealth(const std::string& address, const std::string& service, bool serving,
                           absl::Time deadline, const rpc::ClientCredentials& credentials = {});

// One health check: true iff SERVING. An unreachable server is not serving.
bool IsServing(const std::string& address, const std::string& service,
               absl::Duration timeout = absl::Seconds(1), const rpc::ClientCredentials& credentials = {});

}  // namespace moe::testing

#endif  // MOE_TESTS_SERVICES_PROCESS_HELPER_H_
