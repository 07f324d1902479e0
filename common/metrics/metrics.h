// One prometheus-cpp registry per process, served as Prometheus text on /metrics. Metric names and
// labels are the contract in deploy/metrics/catalog.txt (moe_*, base units, _total counters).
//
// Thread safety: all functions are thread-safe; metric objects are prometheus-cpp's (thread-safe).
#ifndef MOE_COMMON_METRICS_METRICS_H_
#define MOE_COMMON_METRICS_METRICS_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace moe::metrics {

// The process-wide registry.
prometheus::Registry& Registry();
std::shared_ptr<prometheus::Registry> SharedRegistry();

// Worker threads of the /metrics server. Each connection holds one while it is open (up to
// kMetricsRequestTimeoutMs without a request), so a few idle or slow clients must not use them all
// and starve Prometheus's scrape.
// civetweb is thread-per-connection, so this bounds rather than removes the effect: more idle
// connections than threads delay a scrape by up to the timeout (docs/metrics.md).
inline constexpr int kMetricsThreads = 32;
inline constexpr int kMetricsRequestTimeoutMs = 5000;

// Serves /metrics on `host`:`port` (host "0.0.0.0" for every IPv4 interface, "127.0.0.1" for
// loopback only; port 0 picks a free port) with kMetricsThreads threads. Returns the bound port.
// UNAVAILABLE naming the address when it cannot be bound. Callable once per process; a second call
// returns FAILED_PRECONDITION.
absl::StatusOr<int> StartExposer(const std::string& host, int port);

// The metrics every service exports: moe_build_info{service,version,revision,backend} = 1 (version
// and revision of common/metrics/build_info.h), moe_ready, and moe_worker_price_per_hour_dollars
// (this process's own --worker_price_per_hour). Returns the moe_ready gauge, which the service sets
// whenever its readiness changes.
prometheus::Gauge& RegisterProcessMetrics(std::string_view service, double price_per_hour_dollars);

// Histogram bucket upper bounds (the catalogue lists each histogram's).
prometheus::Histogram::BucketBoundaries Buckets(std::initializer_list<double> bounds);

// A new family `name` with help text `help` in `registry`, and its one series without labels (most
// per-process metrics: counters, gauges and histograms that need no label).
prometheus::Counter& AddUnlabeledCounter(prometheus::Registry& registry, const std::string& name,
                                         const std::string& help);
prometheus::Gauge& AddUnlabeledGauge(prometheus::Registry& registry, const std::string& name,
                                     const std::string& help);
prometheus::Histogram& AddUnlabeledHistogram(prometheus::Registry& registry, const std::string& name,
                                             const std::string& help,
                                             const prometheus::Histogram::BucketBoundaries& buckets);

}  // namespace moe::metrics

#endif  // MOE_COMMON_METRICS_METRICS_H_
