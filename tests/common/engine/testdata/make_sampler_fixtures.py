#!/usr/bin/python3
"""Writes sampler_transformers_cases.json: transformers' logits processors run with torch.

The processors below are transformers' code (src/transformers/generation/logits_process.py,
docs/numerics.md#sampling) reduced to one row; the list order is _get_logits_processor's
(utils.py): RepetitionPenalty, then only when sampling Temperature -> TopK -> TopP -> MinP.
The penalty_* cases add vLLM's presence and frequency penalties (vllm/model_executor/layers/utils.py
apply_penalties: repetition over prompt and output, then frequency * output count, then presence
* (count > 0)), which transformers does not have; their "context" is the prompt followed by the
last "num_generated" ids, the generated output.
The C++ test (sampler_test.cc) compares Sampler::ProcessLogits / Probabilities to these outputs, so
CI needs no torch. Regenerate with:  /usr/bin/python3 make_sampler_fixtures.py  (torch 1.13).
With --check it regenerates in memory and exits 1 if the committed file differs, 77 (skip) without
torch or with another torch version (torch.randn streams may differ between versions).
"""
import json
import math
import os
import sys

try:
    import torch
except ImportError:
    print("torch not available; skipping")
    sys.exit(77)

FILTER = -float("inf")


def repetition_penalty(input_ids, scores, penalty):
    score = torch.gather(scores, 1, input_ids)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return scores.scatter(1, input_ids, score)


def temperature(scores, t):
    return scores / t


def top_k(scores, k, min_tokens_to_keep=1):
    k = min(max(k, min_tokens_to_keep), scores.size(-1))
    indices_to_remove = scores < torch.topk(scores, k)[0][..., -1, None]
    return scores.masked_fill(indices_to_remove, FILTER)


def top_p(scores, p, min_tokens_to_keep=1, stable=False):
    # transformers calls torch.sort without stable=True; torch's CPU sort then orders equal scores
    # arbitrarily, so at an exact tie on the boundary which token survives is torch's choice.
    # Sampler sorts stably (lower id first, so the lower id is removed first); `stable` gives that.
    sorted_logits, sorted_indices = torch.sort(scores, descending=False, stable=stable)
    cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    sorted_indices_to_remove = cumulative_probs <= (1 - p)
    sorted_indices_to_remove[..., -min_tokens_to_keep:] = 0
    indices_to_remove = sorted_indices_to_remove.scatter(1, sorted_indices, sorted_indices_to_remove)
    return scores.masked_fill(indices_to_remove, FILTER)


def min_p(scores, mp, min_tokens_to_keep=1):
    probs = torch.softmax(scores, dim=-1)
    top_probs = probs.amax(dim=-1, keepdim=True)
    scaled_min_p = mp * top_probs
    tokens_to_remove = probs < scaled_min_p
    sorted_indices = torch.argsort(scores, descending=True, dim=-1)
    sorted_indices_to_remove = torch.gather(tokens_to_remove, dim=-1, index=sorted_indices)
    sorted_indices_to_remove[..., :min_tokens_to_keep] = False
    indices_to_remove = sorted_indices_to_remove.scatter(1, sorted_indices, sorted_indices_to_remove)
    return scores.masked_fill(indices_to_remove, FILTER)


def bin_counts(ids, vocab):
    counts = torch.zeros((1, vocab), dtype=torch.long)
    if ids:
        counts.scatter_add_(1, torch.tensor([ids], dtype=torch.long),
                            torch.ones((1, len(ids)), dtype=torch.long))
    return counts


def vllm_penalties(scores, prompt, output, rp, pp, fp):
    """vLLM's apply_penalties for one row: fp32 logits, int64 counts, fp32 penalty tensors."""
    vocab = scores.size(-1)
    prompt_mask = bin_counts(prompt, vocab) > 0
    output_counts = bin_counts(output, vocab)
    output_mask = output_counts > 0
    rep = torch.full((1, vocab), rp, dtype=torch.float32)
    rep[~(prompt_mask | output_mask)] = 1.0
    scores = torch.where(scores > 0, scores / rep, scores * rep)
    scores -= torch.tensor([fp], dtype=torch.float32).unsqueeze(dim=1) * output_counts
    scores -= torch.tensor([pp], dtype=torch.float32).unsqueeze(dim=1) * output_mask
    return scores


def process(logits, context, params, stable=False, num_generated=0):
    scores = logits.clone()[None, :]
    input_ids = torch.tensor([context], dtype=torch.long)
    if "presence_penalty" in params:
        split = len(context) - num_generated
        scores = vllm_penalties(scores, context[:split], context[split:], params["repetition_penalty"],
                                params["presence_penalty"], params["frequency_penalty"])
    elif params["repetition_penalty"] != 1.0:
        scores = repetition_penalty(input_ids, scores, params["repetition_penalty"])
    if params["temperature"] == 0.0:  # greedy: transformers adds no warpers without do_sample
        return scores[0]
    if params["temperature"] != 1.0:
        scores = temperature(scores, params["temperature"])
    if params["top_k"] > 0:
        scores = top_k(scores, params["top_k"])
    if params["top_p"] < 1.0:
        scores = top_p(scores, params["top_p"], stable=stable)
    if params["min_p"] > 0.0:
        scores = min_p(scores, params["min_p"])
    return scores[0]


MASK64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def random_uniform(seed, step):
    """The documented stream of sampler.cc, written independently of the C++."""
    key = mix((seed + GAMMA) & MASK64)
    bits = mix((key + (step + 1) * GAMMA) & MASK64)
    return (bits >> 11) / float(1 << 53)


def encode_scores(scores):
    return [None if math.isinf(s) and s < 0 else s for s in scores.tolist()]


def encode_probs(probs):
    # Compared with a tolerance, so 8 significant digits are plenty.
    return [float(f"{q:.8g}") for q in probs.tolist()]


def params(t=1.0, k=0, p=1.0, mp=0.0, rp=1.0, pp=None, fp=None):
    out = {"temperature": t, "top_k": k, "top_p": p, "min_p": mp, "repetition_penalty": rp}
    if pp is not None or fp is not None:
        out.update({"presence_penalty": pp or 0.0, "frequency_penalty": fp or 0.0})
    return out


def main():
    gen = torch.Generator().manual_seed(1234)
    param_sets = [
        ("penalty_only", params(rp=1.3)),
        ("temperature_only", params(t=0.7)),
        ("top_k_only", params(k=5)),
        ("top_p_only", params(p=0.8)),
        ("min_p_only", params(mp=0.1)),
        ("qwen_thinking_defaults", params(t=0.6, k=20, p=0.95)),
        ("qwen_instruct_with_penalty", params(t=0.7, k=20, p=0.8, rp=1.1)),
        ("all_processors", params(t=0.8, k=12, p=0.9, mp=0.05, rp=1.2)),
        ("hot_temperature_top_p", params(t=1.7, p=0.6)),
        ("greedy_with_penalty", params(t=0.0, rp=1.5)),
    ]
    cases = []
    for vocab, scale, quantum in [(64, 3.0, None), (64, 2.0, 0.25), (512, 4.0, None)]:
        for name, prm in param_sets:
            logits = torch.randn(vocab, generator=gen) * scale
            if quantum is not None:  # coarse values force ties at the top-k / top-p boundaries
                logits = torch.round(logits / quantum) * quantum
            logits = logits.to(torch.float32)
            context = torch.randint(0, vocab, (vocab // 4,), generator=gen).tolist()
            scores = process(logits, context, prm)
            probs = torch.softmax(scores, dim=-1)
            case = {
                "name": f"{name}_v{vocab}" + ("_ties" if quantum else ""),
                "params": prm,
                "logits": logits.tolist(),
                "context": context,
                "probs": encode_probs(probs),
                "greedy_token": int(torch.argmax(scores)),
            }
            stable_scores = process(logits, context, prm, stable=True)
            if not torch.equal(stable_scores, scores):
                # Same number of survivors, different tied token: record the stable-order result.
                case["stable_scores"] = encode_scores(stable_scores)
                case["stable_probs"] = encode_probs(torch.softmax(stable_scores, dim=-1))
            case["scores"] = encode_scores(scores)
            cases.append(case)
    # vLLM's presence/frequency penalties. A generator of their own keeps the cases above as they
    # were. Outputs repeat ids from a small range, so counts reach 3 and more.
    gen = torch.Generator().manual_seed(4321)
    penalty_sets = [
        ("penalty_presence", params(pp=0.7)),
        ("penalty_frequency", params(fp=0.45)),
        ("penalty_negative", params(pp=-1.3, fp=-0.6)),
        ("penalty_all_with_repetition", params(rp=1.25, pp=0.5, fp=1.1)),
        ("penalty_with_warpers", params(t=1.5, k=30, p=0.95, mp=0.01, rp=1.05, pp=1.5, fp=0.3)),
        ("penalty_greedy", params(t=0.0, pp=2.0, fp=2.0)),
    ]
    for vocab, scale in [(64, 3.0), (512, 4.0)]:
        for name, prm in penalty_sets:
            logits = (torch.randn(vocab, generator=gen) * scale).to(torch.float32)
            logits[:12] += scale  # the output's ids lead, so the penalties change the winners
            prompt = torch.randint(0, vocab, (vocab // 8,), generator=gen).tolist()
            output = torch.randint(0, 12, (24,), generator=gen).tolist()
            context = prompt + output
            scores = process(logits, context, prm, num_generated=len(output))
            assert torch.equal(scores, process(logits, context, prm, stable=True,
                                               num_generated=len(output)))
            cases.append({
                "name": f"{name}_v{vocab}",
                "params": prm,
                "logits": logits.tolist(),
                "context": context,
                "num_generated": len(output),
                "probs": encode_probs(torch.softmax(scores, dim=-1)),
                "greedy_token": int(torch.argmax(scores)),
                "scores": encode_scores(scores),
            })
    streams = [{"seed": s, "step": t, "u": random_uniform(s, t)}
               for s in (0, 1, 42, 2**64 - 1) for t in (0, 1, 1000, 2**63)]
    out = {"generator": "make_sampler_fixtures.py", "torch": torch.__version__, "cases": cases,
           "random_uniform": streams}
    text = json.dumps(out, separators=(",", ":")) + "\n"
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "sampler_transformers_cases.json")
    if "--check" in sys.argv:
        with open(path) as f:
            committed = f.read()
        if json.loads(committed)["torch"] != torch.__version__:
            print(f"fixtures made with torch {json.loads(committed)['torch']}; skipping")
            sys.exit(77)
        if committed != text:
            print(f"{path} is stale: rerun {os.path.basename(__file__)}")
            sys.exit(1)
        print("fixtures up to date")
        return
    with open(path, "w") as f:
        f.write(text)
    ties = [c["name"] for c in cases if "stable_scores" in c]
    print(f"wrote {len(cases)} cases to {path}; tie-order dependent: {ties}")


if __name__ == "__main__":
    main()
