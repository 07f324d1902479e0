// balancer_bench: the expert load balancer on a model with skewed routing, in embedded mode
// (docs/architecture.md#expert-load-balancer). Runs the same batch of greedy requests twice on
// --shards in-process expert workers: first on the home shards, then after the planner has copied
// hot experts (within --budget-experts extra experts per worker) from the first run's window. Prints
// the max/mean expert-worker load (rows sent to each worker) and the decode throughput of both runs.
//
//   moectl make-model --preset tiny --hot-experts 4 --out /tmp/skewed
//   build/bench/balancer_bench --model /tmp/skewed --shards 4
//
// In embedded mode every worker shares this machine's cores, so the throughput change shows the
// cost of the switch and of the extra copies, not the gain a cluster gets from unloading its hottest
// worker (the ratio is what predicts that).
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "common/engine/engine.h"
#include "common/engine/expert_balancer.h"
#include "common/engine/testing/requests.h"

namespace moe::engine {
namespace {

using engine_testing::GreedyRequest;
using engine_testing::PseudoRandomPrompt;
using Clock = std::chrono::steady_clock;

struct RunResult {
  double tokens_per_s = 0.0;
  double ratio = 1.0;
  ExpertLoad load;
};

RunResult RunBatch(Engine& engine, int requests, int prompt_len, int new_tokens, const std::string& tag) {
  for (int i = 0; i < requests; ++i) {
    const absl::Status s = engine.AddRequest(
        GreedyRequest(absl::StrCat(tag, i), PseudoRandomPrompt(17 + 31 * i, prompt_len), new_tokens));
    if (!s.ok()) {
      std::fprintf(stderr, "balancer_bench: %s\n", s.ToString().c_str());
      std::exit(1);
    }
  }
  engine.TakeExpertLoad();
  int64_t tokens = 0;
  const auto start = Clock::now();
  while (engine.HasWork()) {
    for (const TokenEvent& e : engine.Step()) {
      if (e.finish_reason == FinishReason::kError) {
        std::fprintf(stderr, "balancer_bench: request %s failed: %s\n", e.request_id.c_str(),
                     e.error.ToString().c_str());
        std::exit(1);
      }
      if (e.token_id >= 0) ++tokens;
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  RunResult result;
  result.tokens_per_s = static_cast<double>(tokens) / seconds;
  result.load = engine.TakeExpertLoad();
  result.ratio =
      MaxMeanRatio(std::vector<double>(result.load.worker_rows.begin(), result.load.worker_rows.end()));
  return result;
}

std::string Rows(const ExpertLoad& load) {
  std::string out;
  for (uint64_t rows : load.worker_rows) absl::StrAppend(&out, out.empty() ? "" : " ", rows);
  return out;
}

int Main(int argc, char** argv) {
  CLI::App app("balancer_bench: max/mean expert-worker load and throughput before and after balancing");
  std::string model;
  int shards = 4, budget_experts = 4, requests = 16, prompt_len = 32, new_tokens = 32;
  app.add_option("--model", model, "Model directory (make-model --hot-experts N for skewed routing)")
      ->required();
  app.add_option("--shards", shards, "In-process expert workers (default 4)");
  app.add_option("--budget-experts", budget_experts,
                 "Extra experts per worker the planner may add (default 4)");
  app.add_option("--requests", requests, "Requests per run (default 16)");
  app.add_option("--prompt-len", prompt_len, "Prompt tokens (default 32)");
  app.add_option("--new-tokens", new_tokens, "Generated tokens per request (default 32)");
  CLI11_PARSE(app, argc, argv);
  if (shards < 2 || budget_experts < 0 || requests < 1 || prompt_len < 1 || new_tokens < 1) {
    std::fprintf(stderr,
                 "balancer_bench: --shards must be >= 2 and --budget-experts >= 0, --requests, --prompt-len, "
                 "--new-tokens >= 1\n");
    return 2;
  }
  EngineOptions options;
  options.kv_cache_bytes = int64_t{256} << 20;
  auto engine = Engine::CreateEmbedded(model, options, shards);
  if (!engine.ok()) {
    std::fprintf(stderr, "balancer_bench: %s\n", engine.status().ToString().c_str());
    return 1;
  }
  (*engine)->WaitForHugePages();  // steady state: the weights where they are served from
  RunBatch(**engine, 2, prompt_len, 4, "warmup");
  const RunResult before = RunBatch(**engine, requests, prompt_len, new_tokens, "a");
  const int64_t budget = budget_experts * (*engine)->embedded_experts()->ExpertBytes();
  const auto plan_start = Clock::now();
  auto plan = (*engine)->RebalanceExperts(before.load, budget);
  const double apply_ms = std::chrono::duration<double, std::milli>(Clock::now() - plan_start).count();
  if (!plan.ok()) {
    std::fprintf(stderr, "balancer_bench: %s\n", plan.status().ToString().c_str());
    return 1;
  }
  const RunResult after = RunBatch(**engine, requests, prompt_len, new_tokens, "b");
  std::printf("workers %d, budget %d extra experts per worker (%lld bytes)\n", shards, budget_experts,
              static_cast<long long>(budget));
  std::printf(
      "plan: version %llu, %zu copies added, model ratio %.3f -> %.3f, plan + load + switch %.1f ms\n",
      static_cast<unsigned long long>(plan->placement.version()), plan->added.size(), plan->ratio_before,
      plan->ratio_after, apply_ms);
  std::printf("before: max/mean load %.3f  rows/worker [%s]  %.1f tokens/s\n", before.ratio,
              Rows(before.load).c_str(), before.tokens_per_s);
  std::printf("after:  max/mean load %.3f  rows/worker [%s]  %.1f tokens/s\n", after.ratio,
              Rows(after.load).c_str(), after.tokens_per_s);
  return 0;
}

}  // namespace
}  // namespace moe::engine

int main(int argc, char** argv) {
  return moe::engine::Main(argc, argv);
}
