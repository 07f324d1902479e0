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
// `ca_name`), and tls.crt and tls.key (a certificate signed by it for client and server use, with
// the DNS SANs kClusterServerName and localhost and the IP SAN 127.0.0.1), all valid for
// `valid_days`. Keys are written mode 0600. Returns the TlsOptions naming ca.crt, tls.crt and
// tls.key. INTERNAL with openssl's output when openssl is missing or fails.
absl::StatusOr<TlsOptions> MakeClusterCertificates(const std::string& dir, const std::string& ca_name,
                                                   int valid_days = 30);

}  // namespace moe::rpc

#endif  // MOE_COMMON_RPC_TLS_CERTIFICATES_H_
