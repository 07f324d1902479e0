#include "common/metrics/metrics.h"

#include <mutex>

#include "absl/strings/str_cat.h"
#include "common/metrics/build_info.h"
#include "prometheus/exposer.h"

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

absl::StatusOr<int> StartExposer(const std::string& host, int port) {
  std::lock_guard<std::mutex> lock(mu);
  if (exposer != nullptr) return absl::FailedPreconditionError("the metrics exposer is already running");
  // civetweb writes IPv6 addresses in brackets: [::1]:9090.
  const bool ipv6 = host.find(':') != std::string::npos && host.front() != '[';
  const std::string address = ipv6 ? absl::StrCat("[", host, "]:", port) : absl::StrCat(host, ":", port);
  try {
    // civetweb throws on a bind failure; this is the one exception boundary in the metrics path.
    auto e = std::make_unique<prometheus::Exposer>(
        std::vector<std::string>{"listening_ports", address, "num_threads", absl::StrCat(kMetricsThreads),
                                 "request_timeout_ms", absl::StrCat(kMetricsRequestTimeoutMs)});
    e->RegisterCollectable(SharedRegistry());
    const std::vector<int> ports = e->GetListeningPorts();
    exposer = new std::unique_ptr<prometheus::Exposer>(std::move(e));
    return ports.empty() ? port : ports.front();
  } catch (const std::exception& error) {
    return absl::UnavailableError(absl::StrCat("cannot serve /metrics on ", address, ": ", error.what()));
  }
}

prometheus::Gauge& RegisterProcessMetrics(std::string_view service, double price_per_hour_dollars) {
  prometheus::Registry& registry = Registry();
  prometheus::BuildGauge()
      .Name("moe_build_info")
      .Help("Constant 1; labels say which service binary, version, git revision and compute backend.")
      .Register(registry)
      .Add({{"service", std::string(service)},
            {"version", std::string(BuildVersion())},
            {"revision", std::string(BuildRevision())},
            {"backend", "cpu"}})
      .Set(1);
  prometheus::BuildGauge()
      .Name("moe_worker_price_per_hour_dollars")
      .Help(
          "Price of running this process for one hour, in dollars: its own --worker_price_per_hour. "
          "Cluster cost is the sum over processes (recording rule moe:worker_price_per_hour_dollars:sum).")
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

prometheus::Counter& AddUnlabeledCounter(prometheus::Registry& registry, const std::string& name,
                                         const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add({});
}

prometheus::Gauge& AddUnlabeledGauge(prometheus::Registry& registry, const std::string& name,
                                     const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add({});
}

prometheus::Histogram& AddUnlabeledHistogram(prometheus::Registry& registry, const std::string& name,
                                             const std::string& help,
                                             const prometheus::Histogram::BucketBoundaries& buckets) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add({}, buckets);
}

}  // namespace moe::metrics
