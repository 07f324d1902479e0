#include "services/attention_worker/attention_metrics.h"

#include "common/metrics/metrics.h"

namespace moe::services {

AttentionMetrics::AttentionMetrics(prometheus::Registry& registry) {
  kv_usage_ratio = &prometheus::BuildGauge()
                        .Name("moe_attention_kv_cache_usage_ratio")
                        .Help("Fraction of KV cache blocks in use, 0 to 1.")
                        .Register(registry)
                        .Add({});
  kv_free_blocks = &prometheus::BuildGauge()
                        .Name("moe_attention_kv_cache_free_blocks")
                        .Help("KV cache blocks free for new tokens.")
                        .Register(registry)
                        .Add({});
  kv_blocks = &prometheus::BuildGauge()
                   .Name("moe_attention_kv_cache_blocks")
                   .Help("KV cache blocks in the pool (capacity).")
                   .Register(registry)
                   .Add({});
  sequences_running = &prometheus::BuildGauge()
                           .Name("moe_attention_sequences_running")
                           .Help("Sequences held by this worker (prefilling or decoding).")
                           .Register(registry)
                           .Add({});
  steps = &prometheus::BuildCounter()
               .Name("moe_attention_steps_total")
               .Help("Engine steps (iterations of continuous batching) executed.")
               .Register(registry)
               .Add({});
  preemptions = &prometheus::BuildCounter()
                     .Name("moe_attention_preemptions_total")
                     .Help(
                         "Running sequences pushed back to the queue for lack of KV cache blocks "
                         "(recomputed when readmitted).")
                     .Register(registry)
                     .Add({});
  expert_failovers = &prometheus::BuildCounter()
                          .Name("moe_attention_expert_failovers_total")
                          .Help(
                              "Parts of MoE rounds re-sent to another replica because their expert worker "
                              "failed or did not answer in time (--expert_replicas > 1).")
                          .Register(registry)
                          .Add({});
  expert_placement_switches =
      &prometheus::BuildCounter()
           .Name("moe_attention_expert_placement_switches_total")
           .Help("Switches to a new expert placement version (SetExpertPlacement) made at a step boundary.")
           .Register(registry)
           .Add({});
  expert_extra_experts =
      &prometheus::BuildGauge()
           .Name("moe_attention_expert_extra_experts")
           .Help("Extra expert copies (the load balancer's) in the placement dispatch uses.")
           .Register(registry)
           .Add({});
  expert_load_ratio = &prometheus::BuildGauge()
                           .Name("moe_attention_expert_load_ratio")
                           .Help(
                               "Max / mean rows this worker sent per expert worker over the last 10 s window "
                               "with traffic (1 = even).")
                           .Register(registry)
                           .Add({});
  auto& step_family =
      prometheus::BuildHistogram()
          .Name("moe_attention_step_duration_seconds")
          .Help(
              "Time spent per step in each phase; dispatch and combine are the data-plane hops "
              "summed over layers; transport (dispatch plus the data plane's delivery) and "
              "expert_wait (the expert workers' own time) split them.")
          .Register(registry);
  const auto step_buckets = metrics::Buckets({0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                              0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60});
  step_prefill_seconds = &step_family.Add({{"phase", "prefill"}}, step_buckets);
  step_decode_seconds = &step_family.Add({{"phase", "decode"}}, step_buckets);
  step_dispatch_seconds = &step_family.Add({{"phase", "dispatch"}}, step_buckets);
  step_combine_seconds = &step_family.Add({{"phase", "combine"}}, step_buckets);
  step_transport_seconds = &step_family.Add({{"phase", "transport"}}, step_buckets);
  step_expert_wait_seconds = &step_family.Add({{"phase", "expert_wait"}}, step_buckets);
  batch_tokens =
      &prometheus::BuildHistogram()
           .Name("moe_attention_step_batch_tokens")
           .Help("Tokens (prefill chunk tokens + decode tokens) in one step's batch.")
           .Register(registry)
           .Add({}, metrics::Buckets({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384}));
  batch_sequences = &prometheus::BuildHistogram()
                         .Name("moe_attention_step_batch_sequences")
                         .Help("Sequences in one step's batch.")
                         .Register(registry)
                         .Add({}, metrics::Buckets({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}));
}

}  // namespace moe::services
