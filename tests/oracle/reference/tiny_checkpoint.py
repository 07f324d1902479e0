"""Writes small random Qwen3-MoE / Qwen3 checkpoints (bf16 or FP8) for the reference's self-tests.

The weights are N(0, std) rounded to bf16 (norm weights around 1), seeded, so each test model is
reproducible. FP8 variants quantize every attention/expert/dense projection block-wise
(quantize_weight_blocks) and keep router, norms, embeddings and lm_head in bf16
(docs/numerics.md#fp8-block-format).
"""

import json
import os

import torch

import fp8_e4m3
from safetensors_io import write_safetensors

BASE_CONFIG = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 512,
    "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 128, "intermediate_size": 256,
    "moe_intermediate_size": 128, "num_experts": 16, "num_experts_per_tok": 4,
    "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [], "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "rope_scaling": None, "max_position_embeddings": 4096,
    "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False,
    "use_sliding_window": False, "sliding_window": None, "bos_token_id": 151643,
    "eos_token_id": 151645, "torch_dtype": "bfloat16",
}


def _randn(g, shape, std):
    return (torch.randn(shape, generator=g) * std).to(torch.bfloat16)


def random_tensors(cfg, seed, identical_experts=False):
    """{name: bf16 tensor} for cfg (a dict like BASE_CONFIG)."""
    g = torch.Generator().manual_seed(seed)
    h, d = cfg["hidden_size"], cfg["head_dim"]
    hq, hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    t = {"model.embed_tokens.weight": _randn(g, (cfg["vocab_size"], h), 1.0),
         "model.norm.weight": (1 + _randn(g, (h,), 0.1).float()).to(torch.bfloat16),
         "lm_head.weight": _randn(g, (cfg["vocab_size"], h), h ** -0.5)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[p + n + ".weight"] = (1 + _randn(g, (h,), 0.1).float()).to(torch.bfloat16)
        for n in ("q_norm", "k_norm"):
            t[p + "self_attn." + n + ".weight"] = (1 + _randn(g, (d,), 0.1).float()).to(torch.bfloat16)
        t[p + "self_attn.q_proj.weight"] = _randn(g, (hq * d, h), h ** -0.5)
        t[p + "self_attn.k_proj.weight"] = _randn(g, (hkv * d, h), h ** -0.5)
        t[p + "self_attn.v_proj.weight"] = _randn(g, (hkv * d, h), h ** -0.5)
        t[p + "self_attn.o_proj.weight"] = _randn(g, (h, hq * d), (hq * d) ** -0.5)
        moe = (cfg["model_type"] == "qwen3_moe" and i not in cfg.get("mlp_only_layers", [])
               and (i + 1) % cfg.get("decoder_sparse_step", 1) == 0)
        if moe:
            inter = cfg["moe_intermediate_size"]
            t[p + "mlp.gate.weight"] = _randn(g, (cfg["num_experts"], h), 1.0)
            shared = None
            for e in range(cfg["num_experts"]):
                if shared is None or not identical_experts:
                    shared = (_randn(g, (inter, h), h ** -0.5), _randn(g, (inter, h), h ** -0.5),
                              _randn(g, (h, inter), inter ** -0.5))
                for n, w in zip(("gate", "up", "down"), shared):
                    t[p + f"mlp.experts.{e}.{n}_proj.weight"] = w.clone()
        else:
            inter = cfg["intermediate_size"]
            t[p + "mlp.gate_proj.weight"] = _randn(g, (inter, h), h ** -0.5)
            t[p + "mlp.up_proj.weight"] = _randn(g, (inter, h), h ** -0.5)
            t[p + "mlp.down_proj.weight"] = _randn(g, (h, inter), inter ** -0.5)
    return t


def is_fp8_target(name):
    """Projections that an FP8 checkpoint stores as e4m3 (every nn.Linear but router and lm_head)."""
    return name.endswith("_proj.weight")


def write_checkpoint(out_dir, cfg, tensors, fp8=False, shards=1, generation_config=True):
    """Writes config.json (+quantization_config when fp8), safetensors (optionally sharded)."""
    os.makedirs(out_dir, exist_ok=True)
    cfg = dict(cfg)
    tensors = dict(tensors)
    fp8_names = set()
    if fp8:
        for name in [n for n in tensors if is_fp8_target(n)]:
            codes, scale_inv = fp8_e4m3.quantize_weight_blocks(tensors[name].float())
            tensors[name] = codes
            tensors[name[:-len("weight")] + "weight_scale_inv"] = scale_inv
            fp8_names.add(name)
        cfg["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3",
                                      "quant_method": "fp8", "weight_block_size": [128, 128],
                                      "modules_to_not_convert": ["lm_head"]}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    if generation_config:
        with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
            json.dump({"eos_token_id": [151645, 151643], "do_sample": False}, f)
    names = sorted(tensors)
    if shards == 1:
        write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors, fp8_names)
        return
    weight_map = {}
    for s in range(shards):
        part = names[s::shards]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(os.path.join(out_dir, fname), {n: tensors[n] for n in part},
                          fp8_names & set(part))
        weight_map.update({n: fname for n in part})
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
