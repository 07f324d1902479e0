// `moectl make-model`: writes a complete Hugging Face model directory (config.json,
// generation_config.json, tokenizer.json, tokenizer_config.json, model.safetensors or shards +
// model.safetensors.index.json) with random weights of the real Qwen3-MoE / Qwen3 architecture.
//
// Presets (PresetConfigJson):
//   tiny           qwen3_moe: vocab 151936 (covers the real tokenizer), hidden 128, 4 layers,
//                  4 q heads / 2 kv heads, head_dim 128, 128 experts top-8, expert width 128,
//                  norm_topk_prob, rope_theta 1e6, 4096 positions, untied. hidden 128 keeps every
//                  FP8 linear a multiple of 128 (q [512,128], k/v [256,128], o [128,512]). ~130 MB.
//   dense-tiny     qwen3 (dense): hidden 128, intermediate 256, 2 layers, 4/2 heads, head_dim 128,
//                  tied embeddings (as the small dense Qwen3 releases are), so the tied path is used.
//   bench-30b-4l   Qwen3-30B-A3B's config.json (docs/numerics.md#released-models) with 4 layers (~6 GB bf16).
//   bench-235b-2l  Qwen3-235B-A22B's config.json with 2 layers (~12 GB bf16, sharded).
//
// Weights come from weight_init.h's generator keyed by (--seed, tensor name), so the same seed
// gives byte-identical files on any machine and any thread count. Initialisation, chosen so the
// random model behaves like a trained one where the serving stack's tests need it to:
//   - RMSNorm weights (input/post-attention/final norm, q_norm, k_norm): 1 + 0.1 * N(0,1): near 1
//     so activations stay O(1), but not exactly 1 so a kernel that ignores the weight is caught.
//   - Linear weights (q/k/v/o, expert and dense gate/up/down): N(0, 1/in_features): variance
//     preserving, so hidden states stay O(1) through layers and residual adds matter.
//   - Router mlp.gate: N(0, (3/sqrt(H))^2): router logits have std ~3, so the softmax over 128
//     experts is peaked and the top-8 choice is decisive rather than a near-tie between experts.
//   - embed_tokens: N(0, 1) (MakeModelOptions::embed_std).
//   - lm_head (untied presets): N(0, 1/H) noise plus a planted successor: row v also gets
//     gain/sqrt(H) (gain 8 unless MakeModelOptions says otherwise) times the embedding row of the
//     token t with Successor(t) = v, where
//     Successor(t) = (40503 * t + 7919) mod 151643 on the ordinary tokens. Why: the logits of a
//     purely random lm_head over 151936 tokens have a top-1/top-2 spacing of only ~sigma/sqrt(2 ln V),
//     a few bf16 ulps of the top logit, so greedy decoding of such a model sits on exact bf16 ties
//     at most steps and no two implementations (ours, transformers) can be compared on greedy
//     continuations. With the planted successor the final hidden state, which still carries the
//     current token's embedding through the residual stream, gives Successor(current) a clear
//     margin most of the time, so greedy decoding is decided by the model rather than by rounding
//     noise, while every layer still shapes every logit.
// Values are generated in float32 and rounded to bf16 (round-to-nearest-even). With --dtype fp8 the
// q/k/v/o and expert/dense-MLP linears are the FP8 quantisation of those same bf16 values, per
// 128x128 block as transformers' quantizer does: scale = 448 / amax_block,
// q = e4m3(clamp(w * scale)), weight_scale_inv = 1 / scale (F32); everything else stays BF16.
#ifndef MOE_COMMON_MODEL_MAKER_MAKE_MODEL_H_
#define MOE_COMMON_MODEL_MAKER_MAKE_MODEL_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moe::model_maker {

// Shards are cut when the model exceeds this many bytes (5 GB, as Hugging Face's default max_shard_size).
inline constexpr int64_t kDefaultMaxShardBytes = 5'000'000'000;

// The default strength of the planted successor: times 1/sqrt(H) times the embedding row.
inline constexpr float kPlantedSuccessorGain = 8.0f;

struct MakeModelOptions {
  std::string preset;  // see PresetNames()
  std::string out_dir;
  std::string dtype = "bf16";  // "bf16" or "fp8"
  uint64_t seed = 0;
  // 0: one model.safetensors up to max_shard_bytes, else shards of at most max_shard_bytes.
  // N > 0: exactly N shards model-0000i-of-0000N.safetensors (+ index), even for small models.
  int shards = 0;
  int64_t max_shard_bytes = kDefaultMaxShardBytes;
  bool force = false;  // allow a non-empty out_dir (replaces the files this writes)
  int threads = 0;     // 0 = all cores
  // Called after each tensor is generated and written, with the bytes of weights written so far and
  // in all (the last call has done == total). May be empty.
  std::function<void(int64_t done_bytes, int64_t total_bytes)> progress;
  // Times 1/sqrt(H) times the embedding row (see above); 0 writes a plain N(0, 1/H) lm_head, whose
  // greedy continuations the plant does not decide (the oracle goldens use one).
  float planted_successor_gain = kPlantedSuccessorGain;
  // Standard deviation of embed_tokens (1 by default). The planted successor uses the unscaled rows.
  // The dense-tiny golden model uses 0.05: its lm_head is tied, and with N(0, 1) embeddings the
  // current token's own embedding dominates the 2-layer residual stream, so greedy decoding repeats
  // the last token; smaller embeddings leave the next token to the layers' output.
  float embed_std = 1.0f;
  // Skewed routing, for the expert load balancer (docs/architecture.md#expert-load-balancer): the
  // router rows (mlp.gate) of experts [0, hot_experts) in every MoE layer are multiplied by
  // hot_expert_gain, so their logits spread wider and the top-k picks them far more often than the
  // rest (with 4 hot experts and gain 4 on tiny, roughly a third of the tokens each). The hot experts
  // are the first ones, so they all sit on expert shard 0: the most unbalanced layout. 0: none (the
  // weights are then byte-identical to a model made without these options).
  int64_t hot_experts = 0;
  float hot_expert_gain = 4.0f;
};

std::vector<std::string> PresetNames();

// The planted successor of lm_head (see above) on ordinary token ids [0, 151643), and its inverse.
int64_t PlantedSuccessor(int64_t token);
int64_t PlantedPredecessor(int64_t token);
// The preset's config.json (before any quantization_config), pretty-printed. NOT_FOUND for an
// unknown preset.
absl::StatusOr<std::string> PresetConfigJson(const std::string& preset);

// Writes the model directory (creating it). INVALID_ARGUMENT for an unknown preset or dtype or a
// shard count larger than the number of tensors; FAILED_PRECONDITION when out_dir exists, is not
// empty and force is false. Thread-safe with respect to other calls on different directories.
absl::Status MakeModel(const MakeModelOptions& options);

}  // namespace moe::model_maker

#endif  // MOE_COMMON_MODEL_MAKER_MAKE_MODEL_H_
