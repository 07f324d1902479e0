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

// Serves /metrics on 0.0.0.0:`port` (0 picks a free port). Returns the bound port. Callable once per
// process; a second call returns FAILED_PRECONDITION.
absl::StatusOr<int> StartExposer(int port);

// The metrics every service exports: moe_build_info{service,version,revision,backend} = 1,
// moe_ready, moe_worker_price_per_hour_dollars. Returns the moe_ready gauge, which the service sets
// whenever its readiness changes.
prometheus::Gauge& RegisterProcessMetrics(std::string_view service, double price_per_hour_dollars);

// Histogram bucket upper bounds (the catalogue lists each histogram's).
prometheus::Histogram::BucketBoundaries Buckets(std::initializer_list<double> bounds);

}  // namespace moe::metrics

#endif  // MOE_COMMON_METRICS_METRICS_H_
