#include "common/metrics/metrics.h"

#include <mutex>

#include "absl/strings/str_cat.h"
#include "prometheus/exposer.h"

#ifndef MOE_VERSION
#define MOE_VERSION "0.0.0"
#endif
#ifndef MOE_REVISION
#define MOE_REVISION "unknown"
#endif

namespace moe::metrics {
namespace {

std::mutex mu;
std::unique_ptr<prometheus::Exposer>* exposer = nullptr;

}  // namespace

std::shared_ptr<prometheus::Registry> SharedRegistry() {
  static auto* registry = new std::shared_ptr<prometheus::Registry>(std::make_shared<prometheus::Registry>());
  return *registry;
}

prometheus::Registry& Registry() {
  return *SharedRegistry();
}

absl::StatusOr<int> StartExposer(int port) {
  std::lock_guard<std::mutex> lock(mu);
  if (exposer != nullptr) return absl::FailedPreconditionError("the metrics exposer is already running");
  try {
    // civetweb throws on a bind failure; this is the one exception boundary in the metrics path.
    auto e = std::make_unique<prometheus::Exposer>(absl::StrCat("0.0.0.0:", port));
    e->RegisterCollectable(SharedRegistry());
    const std::vector<int> ports = e->GetListeningPorts();
    exposer = new std::unique_ptr<prometheus::Exposer>(std::move(e));
    return ports.empty() ? port : ports.front();
  } catch (const std::exception& error) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on port ", port, ": ", error.what()));
  }
}

prometheus::Gauge& RegisterProcessMetrics(std::string_view service, double price_per_hour_dollars) {
  prometheus::Registry& registry = Registry();
  prometheus::BuildGauge()
      .Name("moe_build_info")
      .Help("Constant 1; labels say which service binary, version, git revision and compute backend.")
      .Register(registry)
      .Add({{"service", std::string(service)},
            {"version", MOE_VERSION},
            {"revision", MOE_REVISION},
            {"backend", "cpu"}})
      .Set(1);
  prometheus::BuildGauge()
      .Name("moe_worker_price_per_hour_dollars")
      .Help("Configured price of running this process for one hour (--worker_price_per_hour), in dollars.")
      .Register(registry)
      .Add({})
      .Set(price_per_hour_dollars);
  return prometheus::BuildGauge()
      .Name("moe_ready")
      .Help("1 when this process reports SERVING on its readiness health check, else 0.")
      .Register(registry)
      .Add({});
}

prometheus::Histogram::BucketBoundaries Buckets(std::initializer_list<double> bounds) {
  return prometheus::Histogram::BucketBoundaries(bounds);
}

}  // namespace moe::metrics
