// cluster_bench: decode throughput of greedy generation at several concurrencies, either through a
// running cluster's router (--mode=cluster) or with the embedded engine in this process
// (--mode=embedded, same EngineOptions as the attention worker's defaults). run_cluster_bench.sh
// runs both, one after the other (never at the same time: they would compete for the cores), and
// prints them side by side with ucx_perftest.
//
// Decode tokens/s excludes each request's first token: the window opens when the last of the
// concurrent requests has received its first token (so every sequence is past prefill) and closes
// at the last token; the rate is the tokens received inside the window divided by its length.
//
// In cluster mode the attention worker's /metrics is scraped at both ends of the window, so the
// steps inside it are all decode steps:
//   per-layer dispatch+combine = (sum dispatch + sum combine) / (steps x MoE layers)
//   bytes per layer each way   = tokens per step x num_experts_per_tok x hidden x 2 (bf16)
//   achieved bandwidth         = 2 x bytes each way / dispatch+combine time (a lower bound: combine
//                                includes waiting for the experts' compute)
//   per-layer transport        = sum transport / (steps x MoE layers): dispatch plus the data
//                                plane's delivery, without the expert workers' own time
//   per-layer expert_wait      = sum expert_wait / (steps x MoE layers) (docs/metrics.md)
//
// Output: one `RESULT key=value ...` line per concurrency.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/cluster/metrics_scrape.h"
#include "common/engine/engine.h"
#include "common/engine/testing/requests.h"
#include "common/model/config.h"
#include "grpcpp/grpcpp.h"
#include "moe/v1/generate.grpc.pb.h"
#include "tests/integration/client/cluster_client.h"

namespace moe::bench {
namespace {

struct Flags {
  std::string mode;
  std::string model_dir;
  std::string router;
  std::string attention_metrics;
  std::string concurrency = "1,8,32";
  int prompt_len = 32;
  int max_new_tokens = 16;
  int embedded_shards = 1;
  int expert_workers = 2;
};

using moe::engine_testing::PseudoRandomPrompt;
using moe::testing::GreedyRequest;

// Token arrival times of concurrent requests, and the moment all of them had a first token.
class Timeline {
 public:
  explicit Timeline(int requests) : first_seen_(static_cast<size_t>(requests), false), remaining_(requests) {}

  // Records `n` tokens of request `i` arriving now. Returns true for the call that completed the
  // set of first tokens (the window opens).
  bool Add(int i, int n) {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    for (int k = 0; k < n; ++k) arrivals_.push_back(now);
    if (n > 0 && !first_seen_[static_cast<size_t>(i)]) {
      first_seen_[static_cast<size_t>(i)] = true;
      if (--remaining_ == 0) {
        window_start_ = now;
        return true;
      }
    }
    return false;
  }

  // Tokens after the window opened and the window's length in seconds.
  std::pair<int64_t, double> Decode() const {
    absl::MutexLock lock(&mu_);
    int64_t tokens = 0;
    absl::Time last = window_start_;
    for (absl::Time t : arrivals_) {
      if (t > window_start_) {
        ++tokens;
        last = std::max(last, t);
      }
    }
    return {tokens, absl::ToDoubleSeconds(last - window_start_)};
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<bool> first_seen_ ABSL_GUARDED_BY(mu_);
  int remaining_ ABSL_GUARDED_BY(mu_);
  std::vector<absl::Time> arrivals_ ABSL_GUARDED_BY(mu_);
  absl::Time window_start_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
};

struct Snapshot {
  double dispatch_sum = 0, combine_sum = 0, transport_sum = 0, expert_wait_sum = 0, steps = 0, tokens = 0;
};

absl::StatusOr<Snapshot> Scrape(const std::string& address) {
  auto body = ScrapeMetrics(address);
  if (!body.ok()) return body.status();
  Snapshot s;
  const std::string h = "moe_attention_step_duration_seconds";
  for (auto [field, sample] : {std::pair{&s.dispatch_sum, h + "_sum{phase=\"dispatch\"}"},
                               std::pair{&s.combine_sum, h + "_sum{phase=\"combine\"}"},
                               std::pair{&s.transport_sum, h + "_sum{phase=\"transport\"}"},
                               std::pair{&s.expert_wait_sum, h + "_sum{phase=\"expert_wait\"}"},
                               std::pair{&s.steps, h + "_count{phase=\"dispatch\"}"},
                               std::pair{&s.tokens, std::string("moe_attention_step_batch_tokens_sum")}}) {
    auto v = SampleValue(*body, sample);
    if (!v.ok()) return v.status();
    *field = *v;
  }
  return s;
}

int Fail(const std::string& message) {
  std::fprintf(stderr, "cluster_bench: %s\n", message.c_str());
  return 1;
}

// One round of `c` concurrent requests through the router. Returns false (after printing why) if a
// request failed.
bool RunCluster(const Flags& flags, int c, Timeline* timeline, std::optional<Snapshot>* start,
                std::optional<Snapshot>* end) {
  std::vector<std::thread> threads;
  std::vector<grpc::Status> statuses(static_cast<size_t>(c));
  for (int i = 0; i < c; ++i) {
    threads.emplace_back([&, i] {
      auto on_response = [&](const v1::GenerateResponse& response) {
        if (timeline != nullptr && timeline->Add(i, response.tokens_size()) && start != nullptr) {
          auto s = Scrape(flags.attention_metrics);
          if (s.ok())
            *start = *s;
          else
            std::fprintf(stderr, "cluster_bench: scrape: %s\n", s.status().ToString().c_str());
        }
      };
      statuses[static_cast<size_t>(i)] =
          moe::testing::Generate(flags.router,
                                 GreedyRequest(PseudoRandomPrompt(flags.prompt_len, static_cast<uint32_t>(i)),
                                               flags.max_new_tokens),
                                 absl::Seconds(600), on_response)
              .status;
    });
  }
  for (std::thread& t : threads) t.join();
  for (const grpc::Status& s : statuses) {
    if (!s.ok()) {
      std::fprintf(stderr, "cluster_bench: request failed: %s\n", s.error_message().c_str());
      return false;
    }
  }
  if (end != nullptr) {
    auto s = Scrape(flags.attention_metrics);
    if (!s.ok()) {
      std::fprintf(stderr, "cluster_bench: scrape: %s\n", s.status().ToString().c_str());
      return false;
    }
    *end = *s;
  }
  return true;
}

// One round of `c` requests in the embedded engine.
void RunEmbedded(const Flags& flags, engine::Engine& engine, int c, int round, Timeline* timeline) {
  std::vector<std::string> ids;
  for (int i = 0; i < c; ++i) {
    engine::GenerationRequest request;
    request.id = absl::StrCat("r", round, "-", i);
    request.prompt = PseudoRandomPrompt(flags.prompt_len, static_cast<uint32_t>(i));
    request.sampling.temperature = 0.0;
    request.max_new_tokens = flags.max_new_tokens;
    request.ignore_eos = true;
    if (const absl::Status s = engine.AddRequest(request); !s.ok()) {
      std::fprintf(stderr, "cluster_bench: %s\n", s.ToString().c_str());
      std::exit(1);
    }
    ids.push_back(request.id);
  }
  while (engine.HasWork()) {
    std::vector<int> counts(static_cast<size_t>(c), 0);
    for (const engine::TokenEvent& event : engine.Step()) {
      if (event.token_id < 0) continue;
      const auto it = std::find(ids.begin(), ids.end(), event.request_id);
      if (it != ids.end()) ++counts[static_cast<size_t>(it - ids.begin())];
    }
    if (timeline != nullptr) {
      for (int i = 0; i < c; ++i) timeline->Add(i, counts[static_cast<size_t>(i)]);
    }
  }
}

int Main(int argc, char** argv) {
  Flags flags;
  CLI::App app("cluster_bench: decode tokens/s of a cluster or of embedded mode");
  app.add_option("--mode", flags.mode, "cluster or embedded")
      ->required()
      ->check(CLI::IsMember({"cluster", "embedded"}));
  app.add_option("--model", flags.model_dir, "Model directory")->required()->check(CLI::ExistingDirectory);
  app.add_option("--router", flags.router, "Router HOST:PORT (cluster mode)");
  app.add_option("--attention_metrics", flags.attention_metrics,
                 "Attention worker metrics HOST:PORT (cluster mode)");
  app.add_option("--concurrency", flags.concurrency, "Comma-separated concurrencies");
  app.add_option("--prompt_len", flags.prompt_len, "Prompt tokens")->check(CLI::Range(1, 4096));
  app.add_option("--max_new_tokens", flags.max_new_tokens, "Generated tokens per request")
      ->check(CLI::Range(2, 4096));
  app.add_option("--embedded_shards", flags.embedded_shards, "Expert shards in embedded mode")
      ->check(CLI::Range(1, 128));
  app.add_option("--expert_workers", flags.expert_workers, "Expert workers of the cluster (message size)")
      ->check(CLI::Range(1, 128));
  CLI11_PARSE(app, argc, argv);
  if (flags.mode == "cluster" && (flags.router.empty() || flags.attention_metrics.empty())) {
    return Fail("--mode=cluster needs --router and --attention_metrics");
  }
  std::vector<int> concurrencies;
  for (absl::string_view part : absl::StrSplit(flags.concurrency, ',')) {
    int c = 0;
    if (!absl::SimpleAtoi(part, &c) || c < 1 || c > 1024)
      return Fail(absl::StrCat("--concurrency: bad value '", part, "'"));
    concurrencies.push_back(c);
  }
  auto config = model::ModelConfig::FromFile(flags.model_dir + "/config.json");
  if (!config.ok()) return Fail(config.status().ToString());
  const int64_t layers = config->num_hidden_layers;
  const int64_t hidden = config->hidden_size;
  const int64_t topk = config->num_experts_per_tok;

  std::unique_ptr<engine::Engine> engine;
  if (flags.mode == "embedded") {
    auto created =
        engine::Engine::CreateEmbedded(flags.model_dir, engine::EngineOptions{}, flags.embedded_shards);
    if (!created.ok()) return Fail(created.status().ToString());
    engine = *std::move(created);
    engine->WaitForHugePages();  // steady state: the weights where they are served from
  }
  // Warm-up: fault in the mmap'ed weights (most experts are routed to by this many tokens).
  const int warm = *std::max_element(concurrencies.begin(), concurrencies.end());
  if (engine) {
    RunEmbedded(flags, *engine, warm, -1, nullptr);
  } else if (!RunCluster(flags, warm, nullptr, nullptr, nullptr)) {
    return 1;
  }

  int round = 0;
  for (int c : concurrencies) {
    Timeline timeline(c);
    std::optional<Snapshot> start, end;
    if (engine) {
      RunEmbedded(flags, *engine, c, round++, &timeline);
    } else if (!RunCluster(flags, c, &timeline, &start, &end)) {
      return 1;
    }
    const auto [tokens, seconds] = timeline.Decode();
    std::string line =
        absl::StrCat("RESULT mode=", flags.mode, " concurrency=", c, " decode_tokens=", tokens,
                     " decode_seconds=", seconds,
                     " decode_tok_per_s=", seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0);
    if (start.has_value() && end.has_value()) {
      const double steps = end->steps - start->steps;
      const double moe_seconds =
          (end->dispatch_sum - start->dispatch_sum) + (end->combine_sum - start->combine_sum);
      const double step_tokens = steps > 0 ? (end->tokens - start->tokens) / steps : 0;
      const double bytes_each_way = step_tokens * static_cast<double>(topk * hidden * 2);
      const double per_layer_us = steps > 0 ? moe_seconds / (steps * static_cast<double>(layers)) * 1e6 : 0;
      const double bandwidth = per_layer_us > 0 ? 2 * bytes_each_way / (per_layer_us * 1e-6) : 0;
      const double layer_steps = steps * static_cast<double>(layers);
      const double transport_us =
          layer_steps > 0 ? (end->transport_sum - start->transport_sum) / layer_steps * 1e6 : 0;
      const double expert_wait_us =
          layer_steps > 0 ? (end->expert_wait_sum - start->expert_wait_sum) / layer_steps * 1e6 : 0;
      absl::StrAppend(&line, " steps=", steps, " tokens_per_step=", step_tokens, " layers=", layers,
                      " bytes_per_layer_each_way=", static_cast<int64_t>(bytes_each_way),
                      " bytes_per_message=", static_cast<int64_t>(bytes_each_way / flags.expert_workers),
                      " dispatch_combine_per_layer_us=", per_layer_us,
                      " transport_per_layer_us=", transport_us, " expert_wait_per_layer_us=", expert_wait_us,
                      " achieved_MiBps=", bandwidth / (1 << 20));
    }
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace moe::bench

int main(int argc, char** argv) {
  return moe::bench::Main(argc, argv);
}
