// A minimal Prometheus text-format scraper for benchmarks: one HTTP/1.0 GET of /metrics over a
// plain TCP socket (no HTTP library in the bench's dependencies) and a lookup of sample values.
//
// Thread safety: free functions, no shared state.
#ifndef MOE_BENCH_CLUSTER_METRICS_SCRAPE_H_
#define MOE_BENCH_CLUSTER_METRICS_SCRAPE_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace moe::bench {

// GET http://<address>/metrics ("host:port", IPv4 literal host). Returns the body; UNAVAILABLE if
// the connection fails, INTERNAL on a non-200 answer. Every socket operation is bounded by `timeout`.
absl::StatusOr<std::string> ScrapeMetrics(const std::string& address,
                                          absl::Duration timeout = absl::Seconds(5));

// The value of the sample whose name-and-labels text is exactly `sample` (e.g.
// `moe_attention_step_duration_seconds_sum{phase="dispatch"}`) in a text-format body. NOT_FOUND if
// absent, INVALID_ARGUMENT if its value does not parse.
absl::StatusOr<double> SampleValue(const std::string& body, const std::string& sample);

}  // namespace moe::bench

#endif  // MOE_BENCH_CLUSTER_METRICS_SCRAPE_H_
