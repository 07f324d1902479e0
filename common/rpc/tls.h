// mTLS on the cluster's internal gRPC hops (router -> attention worker, attention worker and router
// -> expert worker): every internal server demands a client certificate signed by the cluster CA,
// and every internal client presents one and checks the server's against the same CA
// (docs/operations.md#security).
//
// Host names: clients dial whatever address they are given (127.0.0.1:port, a pod's DNS name), so
// instead of requiring every certificate to list every such name, clients check the server's
// certificate against one fixed name that every cluster certificate carries as a DNS SAN,
// kClusterServerName (gRPC's GRPC_SSL_TARGET_NAME_OVERRIDE_ARG). What is authenticated is "a peer
// holding a key certified by the cluster CA", which is what a per-cluster CA means anyway.
#ifndef MOE_COMMON_RPC_TLS_H_
#define MOE_COMMON_RPC_TLS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"

namespace moe::rpc {

// The DNS SAN every cluster certificate carries and every internal client checks.
inline constexpr char kClusterServerName[] = "moe-cluster.internal";

// Roles: a cluster certificate's subject common name says which part of the cluster holds it.
// The control RPCs that change a live worker check it (RequireCallerRole): an expert worker takes
// Connect only from an attention worker and Drain only from an operator. Any certificate of the
// cluster CA may call the rest (health, GetInfo, GetLoad, Generate).
inline constexpr char kOperatorRole[] = "moe-operator";
inline constexpr char kRouterRole[] = "moe-router";
inline constexpr char kAttentionWorkerRole[] = "moe-attention-worker";
inline constexpr char kExpertWorkerRole[] = "moe-expert-worker";

// OK when the caller of `context` presented a certificate whose common name is `role`;
// PERMISSION_DENIED naming the RPC, the role it needs and the caller's common name otherwise. A
// server without TLS (--insecure) authenticates nobody, so there every caller passes.
absl::Status RequireCallerRole(const grpc::ServerContextBase& context, const char* role, const char* rpc);

struct TlsOptions {
  std::string ca_file;    // --tls_ca: PEM CA certificate(s) that sign the cluster's certificates
  std::string cert_file;  // --tls_cert: PEM certificate (chain) of this process
  std::string key_file;   // --tls_key: PEM private key of cert_file
  bool insecure = false;  // --insecure: plaintext, unauthenticated
  // The name checked in the peer's certificate (see above).
  std::string server_name = kClusterServerName;
};

// The PEM contents of a TlsOptions' files.
struct TlsMaterial {
  std::string ca_pem;
  std::string cert_pem;
  std::string key_pem;
};

// Checks that `options` is usable and reads its files. INVALID_ARGUMENT when neither the three
// files nor insecure are given ("pass --tls_ca, --tls_cert and --tls_key, or --insecure"), when only
// some files are given (naming the missing flags), or when insecure is combined with files;
// NOT_FOUND / PERMISSION_DENIED / INVALID_ARGUMENT naming the flag and path when a file is missing,
// unreadable or empty. With insecure, returns empty material.
absl::StatusOr<TlsMaterial> LoadTlsMaterial(const TlsOptions& options);

// Server credentials: with material, TLS requiring and verifying a client certificate signed by
// the CA; with `insecure`, plaintext.
std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const TlsOptions& options,
                                                               const TlsMaterial& material);

// How an internal client dials: credentials plus the target name it checks. Default-constructed:
// plaintext (unit tests and --insecure).
class ClientCredentials {
 public:
  ClientCredentials();
  // Credentials from LoadTlsMaterial's result: TLS with `material` (CA as root, own certificate and
  // key) checking `options.server_name`, or plaintext when `options.insecure`.
  ClientCredentials(const TlsOptions& options, const TlsMaterial& material);

  // A channel to `address` ("host:port") with `args` plus the target-name override and the internal
  // channel defaults below.
  std::shared_ptr<grpc::Channel> CreateChannel(const std::string& address,
                                               grpc::ChannelArguments args = {}) const;
  bool secure() const { return secure_; }

 private:
  std::shared_ptr<grpc::ChannelCredentials> credentials_;
  std::string server_name_;  // empty: the dialed host name is checked
  bool secure_ = false;
};

// What every internal channel gets (CreateChannel applies it): reconnect backoff of 100 ms growing to
// at most 1 s, so that a restarted worker is dialed again within a second instead of on gRPC's
// default backoff, which grows to minutes (after a 120 s outage, 62 s passed before an attention
// worker reconnected to its expert worker); and at least kInternalMinConnectTimeoutMs for each
// connection attempt, so that a worker slow to finish a handshake (loaded, or a sanitizer build) is
// still reached. gRPC takes GRPC_ARG_MIN_RECONNECT_BACKOFF_MS as that minimum, not as a backoff.
inline constexpr int kInternalMinConnectTimeoutMs = 10000;
void ApplyInternalChannelDefaults(grpc::ChannelArguments* args);

// Server credentials for a public port (the router's --listen): TLS with `cert_file`/`key_file`
// (--public_tls_cert / --public_tls_key), not asking clients for a certificate (public clients
// authenticate with API keys instead); plaintext when both are empty. INVALID_ARGUMENT when only
// one is given; the file errors of LoadTlsMaterial, naming the flag.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakePublicServerCredentials(
    const std::string& cert_file, const std::string& key_file);

// Reads options and material in one go and builds client credentials: what moectl and tests use.
absl::StatusOr<ClientCredentials> MakeClientCredentials(const TlsOptions& options);

}  // namespace moe::rpc

#endif  // MOE_COMMON_RPC_TLS_H_
