// A local cluster for integration tests, started with `moectl cluster up --detach` on ports of
// 127.0.0.1 this process has reserved (tests/services/process_helper.h: ReservePorts) with its own
// state dir, and stopped (with every child) on destruction.
//
// Start-up is deterministic: one attempt, on ports no other test can be handed, and Start returns
// only once the router and every worker answer their gRPC health check "readiness" as SERVING
// (polled, with a deadline). A failure is the test's failure, never retried.
#ifndef MOE_TESTS_INTEGRATION_LOCAL_CLUSTER_H_
#define MOE_TESTS_INTEGRATION_LOCAL_CLUSTER_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "common/rpc/tls.h"
#include "tests/services/process_helper.h"

namespace moe::testing {

class LocalCluster {
 public:
  // Returns nullptr (after printing the reason and the logs) if the cluster did not come up, or a
  // process did not turn ready, within 120 s.
  static std::unique_ptr<LocalCluster> Start(const std::string& model_dir, int attention_workers,
                                             int expert_workers);
  ~LocalCluster();

  const std::string& router() const { return router_; }
  const std::vector<std::string>& attention_workers() const { return attention_; }
  const std::vector<std::string>& expert_workers() const { return experts_; }
  const std::string& state_dir() const { return state_dir_; }
  // How a test dials the workers: mTLS with the certificate `moectl cluster up` made in
  // <state_dir>/tls (the cluster's CA). The router's public port is plaintext.
  const rpc::ClientCredentials& worker_credentials() const { return worker_credentials_; }
  // Pid of a child ("router", "attention-0", "expert-1", ...), -1 if unknown.
  pid_t Pid(const std::string& child) const;
  std::string Logs() const;

 private:
  std::unique_ptr<PortReservation> ports_;
  std::string moectl_;
  std::string state_dir_;
  std::string router_;
  std::vector<std::string> attention_;
  std::vector<std::string> experts_;
  rpc::ClientCredentials worker_credentials_;
};

}  // namespace moe::testing

#endif  // MOE_TESTS_INTEGRATION_LOCAL_CLUSTER_H_
