#include "common/rpc/tls.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status/status_macros.h"

namespace moe::rpc {
namespace {

absl::StatusOr<std::string> ReadPemFile(const char* flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int error = errno;
    const std::string what = absl::StrCat("--", flag, ": cannot read '", path, "': ", std::strerror(error));
    if (error == ENOENT) return absl::NotFoundError(what);
    if (error == EACCES) return absl::PermissionDeniedError(what);
    return absl::InvalidArgumentError(what);
  }
  std::stringstream contents;
  contents << in.rdbuf();
  if (in.bad()) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": cannot read '", path, "'"));
  }
  std::string pem = contents.str();
  if (pem.empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, ": '", path, "' is empty"));
  if (pem.find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": '", path, "' is not PEM"));
  }
  return pem;
}

}  // namespace

absl::StatusOr<TlsMaterial> LoadTlsMaterial(const TlsOptions& options) {
  const bool any_file = !options.ca_file.empty() || !options.cert_file.empty() || !options.key_file.empty();
  if (options.insecure) {
    if (any_file) {
      return absl::InvalidArgumentError(
          "--insecure cannot be combined with --tls_ca, --tls_cert or --tls_key");
    }
    return TlsMaterial{};
  }
  if (!any_file) {
    return absl::InvalidArgumentError(
        "the internal gRPC hops need mTLS: pass --tls_ca, --tls_cert and --tls_key (or MOE_TLS_CA, "
        "MOE_TLS_CERT, MOE_TLS_KEY), or --insecure to run without authentication");
  }
  std::vector<std::string> missing;
  if (options.ca_file.empty()) missing.push_back("--tls_ca");
  if (options.cert_file.empty()) missing.push_back("--tls_cert");
  if (options.key_file.empty()) missing.push_back("--tls_key");
  if (!missing.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("mTLS needs --tls_ca, --tls_cert and --tls_key; missing: ",
                                                   absl::StrJoin(missing, ", ")));
  }
  TlsMaterial material;
  ASSIGN_OR_RETURN(material.ca_pem, ReadPemFile("tls_ca", options.ca_file));
  ASSIGN_OR_RETURN(material.cert_pem, ReadPemFile("tls_cert", options.cert_file));
  ASSIGN_OR_RETURN(material.key_pem, ReadPemFile("tls_key", options.key_file));
  return material;
}

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const TlsOptions& options,
                                                               const TlsMaterial& material) {
  if (options.insecure) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions ssl(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  ssl.pem_root_certs = material.ca_pem;
  ssl.pem_key_cert_pairs.push_back({material.key_pem, material.cert_pem});
  return grpc::SslServerCredentials(ssl);
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakePublicServerCredentials(
    const std::string& cert_file, const std::string& key_file) {
  if (cert_file.empty() && key_file.empty()) return grpc::InsecureServerCredentials();
  if (cert_file.empty() || key_file.empty()) {
    return absl::InvalidArgumentError(
        "TLS on the public port needs both --public_tls_cert and --public_tls_key");
  }
  grpc::SslServerCredentialsOptions ssl(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  ASSIGN_OR_RETURN(pair.cert_chain, ReadPemFile("public_tls_cert", cert_file));
  ASSIGN_OR_RETURN(pair.private_key, ReadPemFile("public_tls_key", key_file));
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  return grpc::SslServerCredentials(ssl);
}

absl::Status RequireCallerRole(const grpc::ServerContextBase& context, const char* role, const char* rpc) {
  const std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) return absl::OkStatus();
  std::string caller = "(none)";
  for (const grpc::string_ref& name : auth->FindPropertyValues("x509_common_name")) {
    caller.assign(name.data(), name.size());
    if (caller == role) return absl::OkStatus();
  }
  return absl::PermissionDeniedError(
      absl::StrCat(rpc, " is for the ", role, " role; the caller's certificate is ", caller));
}

ClientCredentials::ClientCredentials() : credentials_(grpc::InsecureChannelCredentials()) {}

ClientCredentials::ClientCredentials(const TlsOptions& options, const TlsMaterial& material) {
  if (options.insecure) {
    credentials_ = grpc::InsecureChannelCredentials();
    return;
  }
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = material.ca_pem;
  ssl.pem_private_key = material.key_pem;
  ssl.pem_cert_chain = material.cert_pem;
  credentials_ = grpc::SslCredentials(ssl);
  server_name_ = options.server_name;
  secure_ = true;
}

std::shared_ptr<grpc::Channel> ClientCredentials::CreateChannel(const std::string& address,
                                                                grpc::ChannelArguments args) const {
  if (secure_ && !server_name_.empty()) args.SetSslTargetNameOverride(server_name_);
  ApplyInternalChannelDefaults(&args);
  return grpc::CreateCustomChannel(address, credentials_, args);
}

void ApplyInternalChannelDefaults(grpc::ChannelArguments* args) {
  args->SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args->SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // gRPC's MIN_CONNECT_TIMEOUT (doc/connection-backoff.md): the least time one connection attempt
  // (TCP, TLS handshake, HTTP/2 settings) gets before it is abandoned. It must not follow the short
  // backoff: at 100 ms a handshake with a busy worker was abandoned ("handshaker shutdown") and the
  // call failed UNAVAILABLE although the worker was up.
  args->SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, kInternalMinConnectTimeoutMs);
}

absl::StatusOr<ClientCredentials> MakeClientCredentials(const TlsOptions& options) {
  ASSIGN_OR_RETURN(TlsMaterial material, LoadTlsMaterial(options));
  return ClientCredentials(options, material);
}

}  // namespace moe::rpc
