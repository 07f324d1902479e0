// Data-plane benchmark (docs/contributing.md#benchmarks): two UcxTransports in one process on
// separate threads.
//
//   round trip: peer 0 sends an N-byte dispatch, peer 1 answers with an N-byte combine (one MoE
//               layer's hop); reported as median and mean round-trip time and as half of it
//               (comparable to ucx_perftest's one-way ucp_am_lat). The transport's share of a
//               round trip is the round trip less the time the echo held the message between
//               receiving it and sending the answer (an expert worker's compute, here ~0), as the
//               attention worker's metrics split it (docs/metrics.md).
//   bandwidth:  peer 0 sends `iters` N-byte messages back to back, peer 1 receives them and
//               acknowledges the last; bytes / time (comparable to ucx_perftest's ucp_am_bw).
//
// Sizes default to one Qwen3-30B layer's hop (hidden 2048 bf16 = 4 KiB per token row, x8 experts):
// 32 KiB, 256 KiB, 1 MiB, 4 MiB. Output: a table, plus one "RESULT ..." line per measurement for
// scripts.
//
// Usage: transport_bench [--tls=sm,tcp] [--sizes=32768,262144,1048576,4194304] [--iters=N] [--busy_poll_us=U]
//                        [--poll_spin_us=auto|U] [--receiver_progress=0|1]
// --tls is a list of UCX_TLS selections separated by ';' or the shorthands sm (= sm,self) / tcp.
// --poll_spin_us as the services' --ucx_poll_spin_us: auto (adaptive, UcxOptions' default), a fixed
// spin in microseconds, or 0 (never). Each RESULT line also counts the waits of both peers during the
// round trips, how many of them spun, and how many spins caught their message.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "common/transport/ucx/ucx_transport.h"

namespace moe::transport {
namespace {

struct Args {
  std::vector<std::string> tls = {"sm", "tcp"};
  std::vector<size_t> sizes = {32 << 10, 256 << 10, 1 << 20, 4 << 20};
  int iters = 0;                            // 0: by size
  int busy_poll_us = -1;                    // -1: UcxOptions' default
  std::optional<absl::Duration> poll_spin;  // UcxOptions::poll_spin; unset: adaptive
  int receiver_progress = -1;               // -1: UcxOptions' default; 0/1 off/on
};

bool ParseArgs(int argc, char** argv, Args* args) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (absl::ConsumePrefix(&arg, "--tls=")) {
      args->tls = absl::StrSplit(arg, ';', absl::SkipEmpty());
      if (arg.find(';') == absl::string_view::npos && arg.find(',') != absl::string_view::npos &&
          arg != "sm,self") {
        // "sm,tcp" means the two shorthands, not one UCX_TLS value.
        args->tls = absl::StrSplit(arg, ',', absl::SkipEmpty());
      }
    } else if (absl::ConsumePrefix(&arg, "--sizes=")) {
      args->sizes.clear();
      for (absl::string_view s : absl::StrSplit(arg, ',', absl::SkipEmpty())) {
        size_t v;
        if (!absl::SimpleAtoi(s, &v)) return false;
        args->sizes.push_back(v);
      }
    } else if (absl::ConsumePrefix(&arg, "--busy_poll_us=")) {
      if (!absl::SimpleAtoi(arg, &args->busy_poll_us) || args->busy_poll_us < 0) return false;
    } else if (absl::ConsumePrefix(&arg, "--poll_spin_us=")) {
      absl::StatusOr<std::optional<absl::Duration>> spin = ParsePollSpinFlag(arg, "--poll_spin_us");
      if (!spin.ok()) {
        std::fprintf(stderr, "%s\n", std::string(spin.status().message()).c_str());
        return false;
      }
      args->poll_spin = *spin;
    } else if (absl::ConsumePrefix(&arg, "--receiver_progress=")) {
      if (!absl::SimpleAtoi(arg, &args->receiver_progress) || args->receiver_progress < 0 ||
          args->receiver_progress > 1) {
        std::fprintf(stderr, "--receiver_progress: 0 or 1\n");
        return false;
      }
    } else if (absl::ConsumePrefix(&arg, "--iters=")) {
      if (!absl::SimpleAtoi(arg, &args->iters) || args->iters <= 0) return false;
    } else {
      return false;
    }
  }
  return !args->tls.empty() && !args->sizes.empty();
}

std::string UcxTls(const std::string& name) {
  if (name == "sm") return "sm,self";
  return name;
}

int ItersFor(size_t size, int override_iters) {
  if (override_iters > 0) return override_iters;
  if (size <= (64 << 10)) return 2000;
  if (size <= (1 << 20)) return 500;
  return 200;
}

MessageTag Tag(MessageKind kind, uint64_t step, int32_t sender) {
  return MessageTag{kind, step, 0, 0, sender};
}

struct Result {
  double rtt_median_us = 0;
  double rtt_mean_us = 0;
  double transport_median_us = 0;  // round trip less the echo's hold time, median
  double bw_mib_s = 0;             // MiB/s (2^20 bytes), the unit ucx_perftest prints as MB/s
  SpinCounts spins;                // both peers' waits during the round trips (warm-up included)
};

SpinCounts Minus(const SpinCounts& after, const SpinCounts& before) {
  return SpinCounts{after.waits - before.waits, after.spins - before.spins, after.caught - before.caught};
}

absl::StatusOr<Result> Measure(UcxTransport& a, UcxTransport& b, size_t size, int iters) {
  std::vector<std::byte> payload(size, std::byte{0x5a});
  const int warmup = std::max(10, iters / 10);
  const absl::Time deadline_pad = absl::Now() + absl::Minutes(5);
  absl::Status echo_status;
  // Per round trip: how long the echo held the dispatch before sending the answer (not transport).
  std::vector<absl::Duration> holds(static_cast<size_t>(warmup + iters));
  const SpinCounts a_before = a.spin_counts();
  const SpinCounts b_before = b.spin_counts();
  SpinCounts b_spins;
  // Peer 1: answer every dispatch, then take the bandwidth stream and acknowledge its end.
  std::thread echo([&] {
    for (int i = 0; i < warmup + iters; ++i) {
      auto m = b.ReceiveTagged(Tag(MessageKind::kDispatch, i, 0), deadline_pad);
      if (!m.ok()) {
        echo_status = m.status();
        return;
      }
      const absl::Time received = absl::Now();
      const MessageTag answer_tag = Tag(MessageKind::kCombine, i, 1);
      holds[static_cast<size_t>(i)] = absl::Now() - received;
      echo_status = b.Send(0, answer_tag, m->payload);
      if (!echo_status.ok()) return;
    }
    b_spins = Minus(b.spin_counts(), b_before);
    const uint64_t base = warmup + iters;
    for (int i = 0; i < iters; ++i) {
      auto m = b.ReceiveTagged(Tag(MessageKind::kDispatch, base + i, 0), deadline_pad);
      if (!m.ok()) {
        echo_status = m.status();
        return;
      }
    }
    echo_status = b.Send(0, Tag(MessageKind::kCombine, base + iters, 1), {});
  });

  std::vector<double> rtts;
  std::vector<absl::Duration> rtt_durations;
  absl::Status status;
  for (int i = 0; i < warmup + iters && status.ok(); ++i) {
    const absl::Time start = absl::Now();
    status = a.Send(1, Tag(MessageKind::kDispatch, i, 0), payload);
    if (!status.ok()) break;
    auto answer = a.ReceiveTagged(Tag(MessageKind::kCombine, i, 1), deadline_pad);
    if (!answer.ok()) {
      status = answer.status();
      break;
    }
    if (answer->payload.size() != size) status = absl::InternalError("echo size mismatch");
    if (i >= warmup) rtt_durations.push_back(absl::Now() - start);
  }
  const SpinCounts a_spins = Minus(a.spin_counts(), a_before);
  const uint64_t base = warmup + iters;
  const absl::Time stream_start = absl::Now();
  for (int i = 0; i < iters && status.ok(); ++i) {
    status = a.Send(1, Tag(MessageKind::kDispatch, base + i, 0), payload);
  }
  if (status.ok()) {
    status = a.ReceiveTagged(Tag(MessageKind::kCombine, base + iters, 1), deadline_pad).status();
  }
  const absl::Duration stream_time = absl::Now() - stream_start;
  if (!status.ok()) a.Shutdown();  // unblocks the echo thread's waits
  echo.join();
  if (!status.ok()) return status;
  if (!echo_status.ok()) return echo_status;

  Result r;
  std::vector<double> transport;
  for (size_t i = 0; i < rtt_durations.size(); ++i) {
    rtts.push_back(absl::ToDoubleMicroseconds(rtt_durations[i]));
    transport.push_back(
        absl::ToDoubleMicroseconds(rtt_durations[i] - holds[i + static_cast<size_t>(warmup)]));
  }
  std::sort(transport.begin(), transport.end());
  r.transport_median_us = transport[transport.size() / 2];
  std::sort(rtts.begin(), rtts.end());
  r.rtt_median_us = rtts[rtts.size() / 2];
  r.rtt_mean_us = std::accumulate(rtts.begin(), rtts.end(), 0.0) / rtts.size();
  r.bw_mib_s = static_cast<double>(size) * iters / (1 << 20) / absl::ToDoubleSeconds(stream_time);
  r.spins = SpinCounts{a_spins.waits + b_spins.waits, a_spins.spins + b_spins.spins,
                       a_spins.caught + b_spins.caught};
  return r;
}

int Run(const Args& args) {
  std::printf("%-8s %10s %7s %14s %14s %14s %14s %12s\n", "tls", "bytes", "iters", "rtt_p50_us",
              "rtt_mean_us", "half_rtt_us", "transport_us", "bw_MiB/s");
  for (const std::string& tls : args.tls) {
    UcxOptions options;
    options.tls = UcxTls(tls);
    if (args.busy_poll_us >= 0) options.busy_poll = absl::Microseconds(args.busy_poll_us);
    options.poll_spin = args.poll_spin;
    if (args.receiver_progress >= 0) options.receiver_progress = args.receiver_progress == 1;
    // The bandwidth stream runs ahead of the receiver, and each size starts its steps over.
    options.inbox = InboxLimits::Unbounded();
    auto a = UcxTransport::Create(0, options);
    auto b = UcxTransport::Create(1, options);
    if (!a.ok() || !b.ok()) {
      std::fprintf(stderr, "%s: %s\n", tls.c_str(), (!a.ok() ? a.status() : b.status()).ToString().c_str());
      return 1;
    }
    // Each admits the other (no size bound: the bench's sizes are its own) and connects with the
    // secret it was given, as the workers' rendezvous does.
    absl::Status st;
    for (auto [from, to] : {std::pair{a->get(), b->get()}, std::pair{b->get(), a->get()}}) {
      absl::StatusOr<std::string> secret = to->Admit(from->self(), SIZE_MAX);
      st = secret.ok() ? from->Connect(to->self(), to->WorkerAddress(), *secret) : secret.status();
      if (!st.ok()) break;
    }
    if (!st.ok()) {
      std::fprintf(stderr, "%s: %s\n", tls.c_str(), st.ToString().c_str());
      return 1;
    }
    for (size_t size : args.sizes) {
      const int iters = ItersFor(size, args.iters);
      auto r = Measure(**a, **b, size, iters);
      if (!r.ok()) {
        std::fprintf(stderr, "%s %zu: %s\n", tls.c_str(), size, r.status().ToString().c_str());
        return 1;
      }
      std::printf("%-8s %10zu %7d %14.1f %14.1f %14.1f %14.1f %12.1f\n", tls.c_str(), size, iters,
                  r->rtt_median_us, r->rtt_mean_us, r->rtt_median_us / 2, r->transport_median_us,
                  r->bw_mib_s);
      std::printf(
          "RESULT tls=%s bytes=%zu rtt_p50_us=%.2f rtt_mean_us=%.2f transport_p50_us=%.2f bw_MiBps=%.1f "
          "waits=%llu spins=%llu caught=%llu\n",
          tls.c_str(), size, r->rtt_median_us, r->rtt_mean_us, r->transport_median_us, r->bw_mib_s,
          static_cast<unsigned long long>(r->spins.waits), static_cast<unsigned long long>(r->spins.spins),
          static_cast<unsigned long long>(r->spins.caught));
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace
}  // namespace moe::transport

int main(int argc, char** argv) {
  moe::transport::Args args;
  if (!moe::transport::ParseArgs(argc, argv, &args)) {
    std::fprintf(
        stderr,
        "usage: transport_bench [--tls=sm,tcp] [--sizes=32768,262144,...] [--iters=N] [--busy_poll_us=U] "
        "[--poll_spin_us=auto|U] [--receiver_progress=0|1]\n");
    return 2;
  }
  return moe::transport::Run(args);
}
