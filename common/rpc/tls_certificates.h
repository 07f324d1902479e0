// A throwaway cluster CA and certificate made with the `openssl` command (OpenSSL 3): what
// `moectl cluster up` gives a local cluster and what the tests give their servers. Production
// clusters get theirs from their own CA (cert-manager in Kubernetes; docs/operations.md#security).
#ifndef MOE_COMMON_RPC_TLS_CERTIFICATES_H_
#define MOE_COMMON_RPC_TLS_CERTIFICATES_H_

#include <string>

#include "absl/status/statusor.h"
#include "common/rpc/tls.h"

namespace moe::rpc {

// Writes into the existing directory `dir`: ca.crt and ca.key (a self-signed P-256 CA named
// `ca_name`), and one certificate + key signed by it per role, for client and server use, each
// with the DNS SANs kClusterServerName and localhost and the IP SAN 127.0.0.1 and its role as
// the subject's common name (tls.h, "Roles"): tls.crt/tls.key for the operator (moectl, tests),
// router.crt, attention-worker.crt, expert-worker.crt (and .key). All valid for `valid_days`; keys
// are written mode 0600. Returns the TlsOptions naming ca.crt, tls.crt and tls.key (the operator's;
// RoleTlsOptions gives the others). INTERNAL with openssl's output when openssl is missing or fails.
absl::StatusOr<TlsOptions> MakeClusterCertificates(const std::string& dir, const std::string& ca_name,
                                                   int valid_days = 30);

// The TlsOptions of the certificate MakeClusterCertificates made for `role` ("router",
// "attention-worker", "expert-worker"; anything else: the operator's tls.crt) next to
// `cluster`'s CA.
TlsOptions RoleTlsOptions(const TlsOptions& cluster, const std::string& role);

}  // namespace moe::rpc

#endif  // MOE_COMMON_RPC_TLS_CERTIFICATES_H_
