#include "bench/cluster/metrics_scrape.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace moe::bench {
namespace {

// Closes the socket on every return path.
class Socket {
 public:
  explicit Socket(int fd) : fd_(fd) {}
  ~Socket() {
    if (fd_ >= 0) close(fd_);
  }
  int fd() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

absl::StatusOr<std::string> ScrapeMetrics(const std::string& address, absl::Duration timeout) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) || port <= 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("metrics address '", address, "' is not HOST:PORT"));
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, address.substr(0, colon).c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("metrics host in '", address, "' is not an IPv4 address"));
  }
  Socket sock(socket(AF_INET, SOCK_STREAM, 0));
  if (sock.fd() < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  const timeval tv = absl::ToTimeval(timeout);
  setsockopt(sock.fd(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(sock.fd(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (connect(sock.fd(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::UnavailableError(absl::StrCat("connect ", address, ": ", std::strerror(errno)));
  }
  // HTTP/1.0: the server closes the connection after the body and never uses chunked encoding.
  const std::string request = "GET /metrics HTTP/1.0\r\nHost: " + address + "\r\n\r\n";
  for (size_t sent = 0; sent < request.size();) {
    const ssize_t n = send(sock.fd(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return absl::UnavailableError(absl::StrCat("send to ", address, ": ", std::strerror(errno)));
    sent += static_cast<size_t>(n);
  }
  std::string response;
  char buffer[65536];
  while (true) {
    const ssize_t n = recv(sock.fd(), buffer, sizeof(buffer), 0);
    if (n == 0) break;
    if (n < 0) return absl::UnavailableError(absl::StrCat("recv from ", address, ": ", std::strerror(errno)));
    response.append(buffer, static_cast<size_t>(n));
  }
  const size_t header_end = response.find("\r\n\r\n");
  if (header_end == std::string::npos) return absl::InternalError("metrics answer has no HTTP header");
  const absl::string_view status_line = absl::string_view(response).substr(0, response.find("\r\n"));
  if (!absl::StrContains(status_line, " 200")) {
    return absl::InternalError(absl::StrCat("metrics answer: ", status_line));
  }
  return response.substr(header_end + 4);
}

absl::StatusOr<double> SampleValue(const std::string& body, const std::string& sample) {
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    if (!absl::StartsWith(line, sample) || line.size() <= sample.size() || line[sample.size()] != ' ')
      continue;
    absl::string_view rest = line.substr(sample.size() + 1);
    rest = rest.substr(0, rest.find(' '));  // an optional timestamp follows the value
    double value = 0;
    if (!absl::SimpleAtod(rest, &value)) {
      return absl::InvalidArgumentError(absl::StrCat("sample ", sample, " has value '", rest, "'"));
    }
    return value;
  }
  return absl::NotFoundError(absl::StrCat("no sample ", sample));
}

}  // namespace moe::bench
