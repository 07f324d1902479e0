#include "services/router/worker_discovery.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/logging/logging.h"

namespace moe::router {
namespace {

// Splits NAME:PORT (NAME may be a bracketed IPv6 literal); false unless the port is 1..65535.
bool SplitHostPort(absl::string_view value, std::string* host, int* port) {
  const size_t colon = value.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) return false;
  if (!absl::SimpleAtoi(value.substr(colon + 1), port) || *port < 1 || *port > 65535) return false;
  *host = std::string(value.substr(0, colon));
  return true;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ParseWorkersFile(absl::string_view contents,
                                                          const std::string& path) {
  std::vector<std::string> out;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(contents, '\n')) {
    ++line_number;
    if (const size_t hash = line.find('#'); hash != absl::string_view::npos) line = line.substr(0, hash);
    for (absl::string_view entry : absl::StrSplit(line, absl::ByAnyChar(", \t\r"), absl::SkipEmpty())) {
      std::string host;
      int port = 0;
      if (!SplitHostPort(entry, &host, &port)) {
        return absl::InvalidArgumentError(absl::StrCat("--attention_workers_file ", path, " line ",
                                                       line_number, ": '", entry,
                                                       "' is not HOST:PORT with a port in [1, 65535]"));
      }
      out.emplace_back(entry);
    }
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> ReadWorkersFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("--attention_workers_file ", path, ": cannot be read"));
  std::ostringstream contents;
  contents << in.rdbuf();
  return ParseWorkersFile(contents.str(), path);
}

absl::Status ValidateDnsTarget(const std::string& name_port) {
  std::string host;
  int port = 0;
  if (!SplitHostPort(name_port, &host, &port)) {
    return absl::InvalidArgumentError(absl::StrCat("--attention_workers_dns: '", name_port,
                                                   "' is not NAME:PORT with a port in [1, 65535]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ResolveWorkers(const std::string& name_port) {
  std::string host;
  int port = 0;
  if (!SplitHostPort(name_port, &host, &port)) return ValidateDnsTarget(name_port);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* result = nullptr;
  if (const int rc = getaddrinfo(host.c_str(), nullptr, &hints, &result); rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("--attention_workers_dns: resolving '", host, "': ", gai_strerror(rc)));
  }
  std::vector<std::string> out;
  for (const addrinfo* a = result; a != nullptr; a = a->ai_next) {
    char text[INET6_ADDRSTRLEN] = {};
    if (a->ai_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(a->ai_addr)->sin_addr, text, sizeof(text));
      out.push_back(absl::StrCat(text, ":", port));
    } else if (a->ai_family == AF_INET6) {
      inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(a->ai_addr)->sin6_addr, text, sizeof(text));
      out.push_back(absl::StrCat("[", text, "]:", port));
    }
  }
  freeaddrinfo(result);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

WorkerDiscovery::WorkerDiscovery(std::string what, Source source, absl::Duration interval,
                                 AttentionWorkerPool* pool)
    : what_(std::move(what)), source_(std::move(source)), interval_(interval), pool_(pool) {}

std::unique_ptr<WorkerDiscovery> WorkerDiscovery::FromFile(const std::string& path, absl::Duration interval,
                                                           AttentionWorkerPool* pool) {
  auto read = [path] { return ReadWorkersFile(path); };
  return std::make_unique<WorkerDiscovery>("--attention_workers_file " + path, read, interval, pool);
}

std::unique_ptr<WorkerDiscovery> WorkerDiscovery::FromDns(const std::string& name_port,
                                                          absl::Duration interval,
                                                          AttentionWorkerPool* pool) {
  return std::make_unique<WorkerDiscovery>(
      "--attention_workers_dns " + name_port, [name_port] { return ResolveWorkers(name_port); }, interval,
      pool);
}

WorkerDiscovery::~WorkerDiscovery() {
  Stop();
}

absl::Status WorkerDiscovery::Refresh() {
  absl::StatusOr<std::vector<std::string>> workers = source_();
  absl::Status status = workers.status();
  if (status.ok()) status = pool_->SetAttentionWorkers(*workers, what_);
  absl::MutexLock lock(&mu_);
  if (!status.ok() && std::string(status.message()) != last_error_) {
    LOG(WARNING) << "attention workers unchanged (" << pool_->num_workers() << "): " << status.message();
  }
  last_error_ = status.ok() ? "" : std::string(status.message());
  return status;
}

void WorkerDiscovery::Start() {
  thread_ = std::thread([this] {
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
        if (mu_.AwaitWithTimeout(absl::Condition(&stopping), interval_)) return;
      }
      Refresh().IgnoreError();
    }
  });
}

void WorkerDiscovery::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

}  // namespace moe::router
