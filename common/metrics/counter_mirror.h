// A labeled Prometheus counter family that mirrors totals kept elsewhere (e.g. the data plane's
// dropped-message counts, which the transport keeps without knowing about Prometheus): Update adds
// each series' growth since the last Update, and a background thread calls it every `period`, so
// the counters follow even when nothing else in the process is running (an idle worker under a
// flood).
//
// Thread safety: Update from any thread; the destructor stops the thread (destroy the mirror before
// what `source` reads).
#ifndef MOE_COMMON_METRICS_COUNTER_MIRROR_H_
#define MOE_COMMON_METRICS_COUNTER_MIRROR_H_

#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "prometheus/registry.h"

namespace moe::metrics {

class CounterMirror {
 public:
  // Registers family `name` with one series per value of `label` (in `values` order, created up
  // front so /metrics lists them all from the start). `source` returns the current totals, one per
  // value, never decreasing. period <= 0: no thread (call Update yourself).
  CounterMirror(prometheus::Registry& registry, const std::string& name, const std::string& help,
                const std::string& label, const std::vector<std::string>& values,
                std::function<std::vector<uint64_t>()> source, absl::Duration period);
  ~CounterMirror();

  CounterMirror(const CounterMirror&) = delete;
  CounterMirror& operator=(const CounterMirror&) = delete;

  // Reads the source and adds each series' growth.
  void Update();

 private:
  const std::function<std::vector<uint64_t>()> source_;
  std::vector<prometheus::Counter*> series_;
  absl::Mutex mu_;
  std::vector<uint64_t> last_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace moe::metrics

#endif  // MOE_COMMON_METRICS_COUNTER_MIRROR_H_
