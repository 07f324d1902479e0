// Plain HTTP/1.0 over loopback for tests that scrape /metrics: no client library, so that a test can
// also hold raw idle connections against a server.
#ifndef MOE_TESTS_UTIL_HTTP_GET_H_
#define MOE_TESTS_UTIL_HTTP_GET_H_

#include <string>

#include "absl/status/statusor.h"

namespace moe::testing {

// A TCP connection to 127.0.0.1:port whose sends and reads give up after `timeout_seconds`; -1 when
// it cannot be made. The caller closes it.
int ConnectLoopback(int port, int timeout_seconds);

// GET http://127.0.0.1:port/path with HTTP/1.0 (no chunking), waiting at most 5 s. The body when the
// status is 200; UNAVAILABLE when nothing answers, DEADLINE_EXCEEDED when the answer stalls,
// INTERNAL (with the status line) for any other status.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path);

}  // namespace moe::testing

#endif  // MOE_TESTS_UTIL_HTTP_GET_H_
