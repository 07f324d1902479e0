#include "common/rpc/tls_certificates.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status/status_macros.h"

extern char** environ;

namespace moe::rpc {
namespace {

// Runs `openssl args...` with its output in `log`; INTERNAL with that output on failure.
absl::Status RunOpenssl(const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> argv_strings = {"openssl"};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_strings) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = 0;
  const int spawn_error = posix_spawnp(&pid, "openssl", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawn_error != 0) {
    return absl::InternalError("cannot run openssl (is it installed?): " +
                               std::string(strerror(spawn_error)));
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return absl::OkStatus();
  std::ifstream in(log);
  std::stringstream output;
  output << in.rdbuf();
  return absl::InternalError(
      absl::StrCat("openssl ", absl::StrJoin(args, " "), " failed (status ", status, "): ", output.str()));
}

}  // namespace

absl::StatusOr<TlsOptions> MakeClusterCertificates(const std::string& dir, const std::string& ca_name,
                                                   int valid_days) {
  const std::string ca_crt = dir + "/ca.crt", ca_key = dir + "/ca.key", ext = dir + "/tls.ext",
                    log = dir + "/openssl.log", days = std::to_string(valid_days);
  {
    std::ofstream out(ext);
    out << "basicConstraints=critical,CA:FALSE\n"
        << "keyUsage=critical,digitalSignature,keyEncipherment\n"
        << "extendedKeyUsage=serverAuth,clientAuth\n"
        << "subjectAltName=DNS:" << kClusterServerName << ",DNS:localhost,IP:127.0.0.1\n";
    if (!out) return absl::InternalError("cannot write " + ext);
  }
  const std::vector<std::string> ec_key = {"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                                           "-nodes"};
  std::vector<std::string> make_ca = {"req", "-x509"};
  make_ca.insert(make_ca.end(), ec_key.begin(), ec_key.end());
  make_ca.insert(make_ca.end(),
                 {"-keyout", ca_key, "-out", ca_crt, "-days", days, "-subj", "/CN=" + ca_name, "-addext",
                  "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"});
  RETURN_IF_ERROR(RunOpenssl(make_ca, log));
  std::vector<std::string> scratch = {ext, log, dir + "/ca.srl"};
  const std::pair<std::string, const char*> certificates[] = {{"tls", kOperatorRole},
                                                              {"router", kRouterRole},
                                                              {"attention-worker", kAttentionWorkerRole},
                                                              {"expert-worker", kExpertWorkerRole}};
  for (const auto& [file, common_name] : certificates) {
    const std::string crt = dir + "/" + file + ".crt", key = dir + "/" + file + ".key",
                      csr = dir + "/" + file + ".csr";
    std::vector<std::string> make_csr = {"req"};
    make_csr.insert(make_csr.end(), ec_key.begin(), ec_key.end());
    make_csr.insert(make_csr.end(),
                    {"-keyout", key, "-out", csr, "-subj", absl::StrCat("/CN=", common_name)});
    RETURN_IF_ERROR(RunOpenssl(make_csr, log));
    RETURN_IF_ERROR(RunOpenssl({"x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
                                "-CAcreateserial", "-out", crt, "-days", days, "-extfile", ext},
                               log));
    chmod(key.c_str(), 0600);
    scratch.push_back(csr);
  }
  chmod(ca_key.c_str(), 0600);
  for (const std::string& path : scratch) unlink(path.c_str());
  TlsOptions options;
  options.ca_file = ca_crt;
  options.cert_file = dir + "/tls.crt";
  options.key_file = dir + "/tls.key";
  return options;
}

TlsOptions RoleTlsOptions(const TlsOptions& cluster, const std::string& role) {
  TlsOptions options = cluster;
  if (role != "router" && role != "attention-worker" && role != "expert-worker") return options;
  const std::string dir = std::filesystem::path(cluster.ca_file).parent_path().string();
  options.cert_file = dir + "/" + role + ".crt";
  options.key_file = dir + "/" + role + ".key";
  return options;
}

}  // namespace moe::rpc
