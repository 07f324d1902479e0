"""Independent CPU reference of the Qwen3-MoE (and dense Qwen3) forward pass.

Follows transformers' modeling_qwen3_moe.py op by op (docs/numerics.md) with the numerics the
C++ engine chose (common/kernels/cpu/kernels.h). Every rounding point is explicit:

  bf16 linear   y = bf16(sum_k x*W)                     (exact sum, see below)
  RMSNorm       bf16( bf16(x * rsqrt(mean(x^2)+eps)) * w ), stats fp32
  RoPE          cos/sin fp32 -> bf16; q*cos, rotate_half(q)*sin and their sum each rounded to bf16
  attention     s = fp32(q.k) * scale (fp32); causal; softmax fp32; P -> bf16; o = bf16(sum P*v)
  router        bf16 logits; softmax fp32; top-k descending (ties: lower id); renorm fp32
  experts       g,u bf16; bf16(silu_fp32(g)); bf16(a*u); down bf16
  combine       fp32 acc over the k experts in rank order (highest weight first) of out_k*w_k,
                rounded to bf16 once (transformers v5 grouped_mm)
  residual      bf16 adds; final norm; lm_head bf16; logits returned as fp32 of the bf16 values
  FP8 linear    per-token per-128-group e4m3 activations (s = max(amax,1e-10)/448), block-scaled
                sum over k-blocks ascending in fp32, one bf16 rounding (docs/numerics.md#block-scaled-linear)

"fp32 accumulation" is evaluated in float64 and rounded to fp32 (or straight to bf16) where
transformers holds an fp32 value: products of bf16 values are exact in float64 and the sums'
error is far below one fp32 ulp, so the reference is the exactly-rounded result of the fp32
computation and does not depend on batch shape, BLAS kernel or thread count. That makes
"KV-cache decode == full recompute" hold bit for bit here; an fp32 engine differs from it by
an occasional one-ulp bf16 flip. cos/sin are likewise computed in float64 from the fp32 angle
and rounded to fp32 (correctly rounded libm values).

No transformers import: only torch (1.13 works) and numpy.
"""

import json
import math
import os

import numpy as np
import torch

import fp8_e4m3
from safetensors_io import Checkpoint

BF16 = torch.bfloat16
F32 = torch.float32
F64 = torch.float64
DEFAULT_EOS = [151645, 151643]


# ----------------------------------------------------------------------------- config


class Config:
    """The config.json fields the forward pass needs; accepts transformers v4 and v5 spellings."""

    def __init__(self, raw):
        self.raw = raw
        self.model_type = raw.get("model_type", "qwen3_moe")
        if self.model_type not in ("qwen3_moe", "qwen3"):
            raise ValueError(f"unsupported model_type {self.model_type!r}")
        self.vocab_size = int(raw["vocab_size"])
        self.hidden_size = int(raw["hidden_size"])
        self.num_layers = int(raw["num_hidden_layers"])
        self.num_heads = int(raw["num_attention_heads"])
        self.num_kv_heads = int(raw.get("num_key_value_heads", self.num_heads))
        self.head_dim = int(raw.get("head_dim") or self.hidden_size // self.num_heads)
        self.intermediate_size = int(raw.get("intermediate_size", 0))
        self.moe_intermediate_size = int(raw.get("moe_intermediate_size", 0))
        self.num_experts = int(raw.get("num_experts", raw.get("num_local_experts", 0)) or 0)
        self.top_k = int(raw.get("num_experts_per_tok", 0) or 0)
        self.norm_topk_prob = bool(raw.get("norm_topk_prob", False))
        self.decoder_sparse_step = int(raw.get("decoder_sparse_step", 1) or 1)
        self.mlp_only_layers = list(raw.get("mlp_only_layers") or [])
        self.rms_norm_eps = float(raw.get("rms_norm_eps", 1e-6))
        self.tie_word_embeddings = bool(raw.get("tie_word_embeddings", False))
        self.max_position_embeddings = int(raw.get("max_position_embeddings", 32768))
        if raw.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {raw.get('hidden_act')!r}")
        if raw.get("attention_bias", False):
            raise ValueError("attention_bias=true is not supported")
        if raw.get("use_sliding_window", False):
            raise ValueError("use_sliding_window=true is not supported")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        # RoPE: v5 "rope_parameters" (theta inside), v4 "rope_theta" + optional "rope_scaling".
        rp = raw.get("rope_parameters")
        if rp:
            self.rope_theta = float(rp.get("rope_theta", raw.get("rope_theta", 10000.0)))
            scaling = dict(rp)
        else:
            self.rope_theta = float(raw.get("rope_theta", 10000.0))
            scaling = dict(raw.get("rope_scaling") or {})
        self.rope_type = scaling.get("rope_type", scaling.get("type", "default")) or "default"
        if self.rope_type not in ("default", "yarn"):
            raise ValueError(f"unsupported rope type {self.rope_type!r}")
        self.rope_scaling = scaling
        q = raw.get("quantization_config")
        self.fp8 = bool(q) and q.get("quant_method") == "fp8"
        if q and not self.fp8:
            raise ValueError(f"unsupported quantization {q.get('quant_method')!r}")
        if self.fp8:
            bs = list(q.get("weight_block_size") or [128, 128])
            if bs != [128, 128]:
                raise ValueError(f"unsupported weight_block_size {bs}")
            if q.get("activation_scheme", "dynamic") != "dynamic":
                raise ValueError("only dynamic FP8 activation scaling is supported")

    def is_moe_layer(self, i):
        return (self.model_type == "qwen3_moe" and i not in self.mlp_only_layers
                and self.num_experts > 0 and (i + 1) % self.decoder_sparse_step == 0)


def load_config(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        return Config(json.load(f))


def load_eos_ids(model_dir):
    """eos ids from generation_config.json (list or int), else config.json, else Qwen's pair."""
    for name in ("generation_config.json", "config.json"):
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                eos = json.load(f).get("eos_token_id")
            if eos is not None:
                return [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    return list(DEFAULT_EOS)


# ----------------------------------------------------------------------------- numerics


def exact_matmul(a, b):
    """a @ b of float tensors, accumulated in float64 (products of bf16/fp8 values are exact)."""
    return a.to(F64) @ b.to(F64)


def to_bf16(x64):
    """float64 -> fp32 -> bf16 (torch rounds both steps to nearest even)."""
    return x64.to(F32).to(BF16)


class Linear:
    """A weight [N, K]: bf16, or FP8 codes + fp32 weight_scale_inv [ceil(N/128), ceil(K/128)]."""

    def __init__(self, weight, scale_inv=None):
        self.out_features, self.in_features = weight.shape
        if scale_inv is None:
            if weight.dtype != BF16:
                raise ValueError(f"bf16 linear expected, got {weight.dtype}")
            self.fp8 = False
            self.w64 = weight.to(F64)  # exact copy of the bf16 values
        else:
            self.fp8 = True
            nb = (self.out_features + 127) // 128
            kb = (self.in_features + 127) // 128
            if tuple(scale_inv.shape) != (nb, kb):
                raise ValueError(f"weight_scale_inv shape {tuple(scale_inv.shape)} != {(nb, kb)}")
            self.codes = weight
            self.wq64 = fp8_e4m3.decode(weight).to(F64)  # e4m3 values, unscaled
            self.scale_inv = scale_inv.to(F32)

    def dequantized(self):
        """fp32 weight (fp8 value * scale_inv of its block), for tests and the dequant mode."""
        if not self.fp8:
            return self.w64.to(F32)
        s = self.scale_inv.repeat_interleave(128, 0).repeat_interleave(128, 1)
        return self.wq64.to(F32) * s[:self.out_features, :self.in_features]

    def __call__(self, x):
        """x: [M, K] bf16 -> [M, N] bf16."""
        if x.dtype != BF16 or x.shape[-1] != self.in_features:
            raise ValueError(f"linear input must be bf16 [*, {self.in_features}], got "
                             f"{x.dtype} {tuple(x.shape)}")
        if not self.fp8:
            return to_bf16(exact_matmul(x, self.w64.T))
        codes, a_scale = fp8_e4m3.quantize_activation_groups(x, 128)
        aq64 = fp8_e4m3.decode(codes).to(F64)
        m = x.shape[0]
        acc = torch.zeros((m, self.out_features), dtype=F32)
        w_scale_rows = self.scale_inv.repeat_interleave(128, 0)[:self.out_features]  # [N, kb]
        for kb in range((self.in_features + 127) // 128):
            ks = slice(kb * 128, (kb + 1) * 128)
            block = exact_matmul(aq64[:, ks], self.wq64[:, ks].T).to(F32)
            acc = acc + (block * a_scale[:, kb:kb + 1]) * w_scale_rows[None, :, kb]
        return acc.to(BF16)


def rms_norm(x, w, eps):
    """x: [..., D] bf16, w: [D] bf16. Stats in fp32, bf16 rounding before the weight multiply."""
    h = x.to(F32)
    var = (h.to(F64).pow(2).mean(-1, keepdim=True)).to(F32)
    h = h * torch.rsqrt(var + eps)
    return w * h.to(BF16)


def silu_mul(g, u):
    """bf16(bf16(silu(g) in fp32) * u)."""
    return torch.nn.functional.silu(g.to(F32)).to(BF16) * u


# ----------------------------------------------------------------------------- rope


def rope_inv_freq(cfg):
    """(inv_freq [D/2] fp32, attention_scaling) exactly as transformers computes them."""
    dim = cfg.head_dim
    base = cfg.rope_theta
    if cfg.rope_type == "default":
        inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(F32) / dim))
        return inv, 1.0
    # _compute_yarn_parameters (transformers modeling_rope_utils).
    sc = cfg.rope_scaling
    factor = sc["factor"]
    attention_factor = sc.get("attention_factor")
    mscale = sc.get("mscale")
    mscale_all_dim = sc.get("mscale_all_dim")
    if "original_max_position_embeddings" in sc:
        orig = sc["original_max_position_embeddings"]
        factor = cfg.max_position_embeddings / orig
    else:
        orig = cfg.max_position_embeddings

    def get_mscale(scale, m=1):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
        else:
            attention_factor = get_mscale(factor)
    beta_fast = sc.get("beta_fast") or 32
    beta_slow = sc.get("beta_slow") or 1

    def correction_dim(rot):
        return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if sc.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=F32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).to(F32) / dim)
    extrap = 1.0 / pos_freqs
    interp = 1.0 / (factor * pos_freqs)
    extrap_factor = 1 - ramp
    inv = interp * (1 - extrap_factor) + extrap * extrap_factor
    return inv, float(attention_factor)


def rope_cos_sin(inv_freq, attention_scaling, positions):
    """cos, sin [T, D] bf16 for integer positions [T] (emb = cat(freqs, freqs))."""
    freqs = positions.to(F32)[:, None] * inv_freq[None, :]  # one fp32 multiply per entry
    emb = torch.cat([freqs, freqs], dim=-1)
    cos = torch.cos(emb.to(F64)).to(F32)
    sin = torch.sin(emb.to(F64)).to(F32)
    if attention_scaling != 1.0:
        cos = cos * attention_scaling
        sin = sin * attention_scaling
    return cos.to(BF16), sin.to(BF16)


def apply_rope(x, cos, sin):
    """x: [T, heads, D] bf16; cos/sin: [T, D] bf16. Three bf16-rounded ops as in torch."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None, :] + rot * sin[:, None, :]


# ----------------------------------------------------------------------------- model


class KvCache:
    """Per-layer post-norm post-RoPE keys and raw values, [pos, Hkv, D] bf16."""

    def __init__(self, num_layers):
        self.k = [None] * num_layers
        self.v = [None] * num_layers

    @property
    def length(self):
        return 0 if self.k[0] is None else self.k[0].shape[0]

    def append(self, layer, k, v):
        if self.k[layer] is None:
            self.k[layer], self.v[layer] = k, v
        else:
            self.k[layer] = torch.cat([self.k[layer], k], 0)
            self.v[layer] = torch.cat([self.v[layer], v], 0)
        return self.k[layer], self.v[layer]


class Qwen3MoeReference:
    """Weights of one checkpoint plus forward(). Single sequence, no batching."""

    def __init__(self, model_dir, routing="v5"):
        if routing not in ("v5",):
            raise ValueError("only v5 routing (fp32 weights, fp32 grouped combine) is implemented")
        self.cfg = cfg = load_config(model_dir)
        self.eos_ids = load_eos_ids(model_dir)
        ck = Checkpoint(model_dir)
        self._ck = ck

        def bf16(name):
            t = ck.get(name)
            if t.dtype != BF16:
                raise ValueError(f"{name}: expected BF16, got {ck.dtype(name)}")
            return t

        def linear(prefix):
            name = prefix + ".weight"
            if ck.dtype(name) == "F8_E4M3":
                if not cfg.fp8:
                    raise ValueError(f"{name} is F8_E4M3 but config has no fp8 quantization_config")
                s = ck.get(prefix + ".weight_scale_inv")
                return Linear(ck.get(name), s.to(F32))
            return Linear(bf16(name))

        self.embed = bf16("model.embed_tokens.weight")
        if tuple(self.embed.shape) != (cfg.vocab_size, cfg.hidden_size):
            raise ValueError(f"embed_tokens shape {tuple(self.embed.shape)} does not match config")
        self.final_norm = bf16("model.norm.weight")
        if "lm_head.weight" in ck:
            self.lm_head = Linear(bf16("lm_head.weight"))
        elif cfg.tie_word_embeddings:
            self.lm_head = Linear(self.embed)
        else:
            raise ValueError("checkpoint lacks lm_head.weight and tie_word_embeddings is false")
        self.layers = []
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            layer = {
                "in_norm": bf16(p + "input_layernorm.weight"),
                "post_norm": bf16(p + "post_attention_layernorm.weight"),
                "q": linear(p + "self_attn.q_proj"), "k": linear(p + "self_attn.k_proj"),
                "v": linear(p + "self_attn.v_proj"), "o": linear(p + "self_attn.o_proj"),
                "q_norm": bf16(p + "self_attn.q_norm.weight"),
                "k_norm": bf16(p + "self_attn.k_norm.weight"),
            }
            if cfg.is_moe_layer(i):
                layer["router"] = Linear(bf16(p + "mlp.gate.weight"))
                layer["experts"] = self._load_experts(ck, p + "mlp.experts", linear)
            else:
                layer["mlp"] = tuple(linear(p + f"mlp.{n}_proj") for n in ("gate", "up", "down"))
            self._check_layer_shapes(i, layer)
            self.layers.append(layer)
        self.inv_freq, self.attention_scaling = rope_inv_freq(cfg)

    def _load_experts(self, ck, prefix, linear):
        cfg = self.cfg
        if prefix + ".gate_up_proj" in ck:  # transformers v5 fused layout (bf16 only)
            gu, down = ck.get(prefix + ".gate_up_proj"), ck.get(prefix + ".down_proj")
            i = cfg.moe_intermediate_size
            return [(Linear(gu[e, :i].contiguous()), Linear(gu[e, i:].contiguous()),
                     Linear(down[e].contiguous())) for e in range(cfg.num_experts)]
        return [tuple(linear(f"{prefix}.{e}.{n}_proj") for n in ("gate", "up", "down"))
                for e in range(cfg.num_experts)]

    def _check_layer_shapes(self, i, layer):
        cfg = self.cfg
        h, d = cfg.hidden_size, cfg.head_dim
        want = {"q": (cfg.num_heads * d, h), "k": (cfg.num_kv_heads * d, h),
                "v": (cfg.num_kv_heads * d, h), "o": (h, cfg.num_heads * d)}
        for key, shape in want.items():
            got = (layer[key].out_features, layer[key].in_features)
            if got != shape:
                raise ValueError(f"layer {i} {key}_proj shape {got} != {shape}")

    # ------------------------------------------------------------------ blocks

    def attention(self, li, h, positions, cache):
        cfg, L = self.cfg, self.layers[li]
        t, d = h.shape[0], cfg.head_dim
        q = L["q"](h).view(t, cfg.num_heads, d)
        k = L["k"](h).view(t, cfg.num_kv_heads, d)
        v = L["v"](h).view(t, cfg.num_kv_heads, d)
        q = rms_norm(q, L["q_norm"], cfg.rms_norm_eps)
        k = rms_norm(k, L["k_norm"], cfg.rms_norm_eps)
        cos, sin = rope_cos_sin(self.inv_freq, self.attention_scaling, positions)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys, values = cache.append(li, k, v)  # [P, Hkv, D], P = past + t
        n_rep = cfg.num_heads // cfg.num_kv_heads
        scale = torch.tensor(d ** -0.5, dtype=F32)
        key_pos = torch.arange(keys.shape[0])
        mask = key_pos[None, :] > positions[:, None]  # [t, P] True = masked
        out = torch.empty((t, cfg.num_heads, d), dtype=BF16)
        for hq in range(cfg.num_heads):
            kv = hq // n_rep
            s = exact_matmul(q[:, hq, :], keys[:, kv, :].T).to(F32) * scale  # [t, P] fp32
            s64 = s.to(F64).masked_fill(mask, -math.inf)
            p = torch.softmax(s64, dim=-1).to(F32).to(BF16)  # fp32 softmax, P rounded to bf16
            out[:, hq, :] = to_bf16(exact_matmul(p, values[:, kv, :]))
        return L["o"](out.reshape(t, cfg.num_heads * d))

    def moe(self, li, h):
        cfg, L = self.cfg, self.layers[li]
        t = h.shape[0]
        logits = L["router"](h)  # bf16 [t, E]
        probs = torch.softmax(logits.to(F64), dim=-1).to(F32)
        w, idx = torch.sort(probs, dim=-1, descending=True, stable=True)  # ties: lower id first
        w, idx = w[:, :cfg.top_k], idx[:, :cfg.top_k]
        if cfg.norm_topk_prob:
            w = w / w.to(F64).sum(-1, keepdim=True).to(F32)
        expert_out = torch.zeros((t, cfg.top_k, cfg.hidden_size), dtype=BF16)
        for e in torch.unique(idx).tolist():
            rows, slots = torch.nonzero(idx == e, as_tuple=True)
            gate, up, down = L["experts"][e]
            x = h[rows]
            expert_out[rows, slots] = down(silu_mul(gate(x), up(x)))
        acc = expert_out[:, 0].to(F32) * w[:, 0:1]
        for j in range(1, cfg.top_k):
            acc = acc + expert_out[:, j].to(F32) * w[:, j:j + 1]
        return acc.to(BF16), idx, w

    def dense_mlp(self, li, h):
        gate, up, down = self.layers[li]["mlp"]
        return down(silu_mul(gate(h), up(h)))

    # ------------------------------------------------------------------ forward

    def forward(self, ids, cache=None, all_logits=False):
        """ids: list of token ids appended after `cache` (a KvCache, updated in place).

        Returns logits as float32 (values of the bf16 lm_head output): [V] for the last position,
        or [T, V] with all_logits=True."""
        cfg = self.cfg
        if cache is None:
            cache = KvCache(cfg.num_layers)
        ids_t = torch.tensor(list(ids), dtype=torch.int64)
        if ids_t.numel() == 0:
            raise ValueError("forward needs at least one token")
        if int(ids_t.min()) < 0 or int(ids_t.max()) >= cfg.vocab_size:
            raise ValueError(f"token id out of range [0, {cfg.vocab_size})")
        past = cache.length
        positions = torch.arange(past, past + ids_t.numel(), dtype=torch.int64)
        x = self.embed[ids_t]
        for li, L in enumerate(self.layers):
            r = x
            h = rms_norm(x, L["in_norm"], cfg.rms_norm_eps)
            x = r + self.attention(li, h, positions, cache)
            r = x
            h = rms_norm(x, L["post_norm"], cfg.rms_norm_eps)
            h = self.moe(li, h)[0] if "router" in L else self.dense_mlp(li, h)
            x = r + h
        x = rms_norm(x if all_logits else x[-1:], self.final_norm, cfg.rms_norm_eps)
        logits = self.lm_head(x).to(F32)
        return logits if all_logits else logits[0]


# ----------------------------------------------------------------------------- generation


def top2_gap(logits):
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


def argmax_first(logits):
    """Index of the maximum, lowest index among ties (as torch.argmax documents for CPU/GPU)."""
    m = logits.max()
    return int(torch.nonzero(logits == m)[0, 0])


def greedy(forward_fn, prompt, max_new_tokens, eos_ids, use_cache=True, on_step=None):
    """Greedy decoding. forward_fn(ids, cache) -> last-position logits (cache None = recompute).

    Returns (prompt_logits, generated ids, per-step top-2 gaps). Stops after an eos id (included).
    on_step(logits), if given, sees the logits each token is chosen from."""
    cache = "new" if use_cache else None
    seq = list(prompt)
    out, gaps = [], []
    logits, state = forward_fn(seq, None if not use_cache else cache)
    prompt_logits = logits
    for step in range(max_new_tokens):
        gaps.append(top2_gap(logits))
        if on_step is not None:
            on_step(logits)
        tok = argmax_first(logits)
        out.append(tok)
        seq.append(tok)
        if tok in eos_ids or step + 1 == max_new_tokens:
            break
        if use_cache:
            logits, state = forward_fn([tok], state)
        else:
            logits, state = forward_fn(seq, None)
    return prompt_logits, out, gaps


def reference_forward_fn(model):
    """Adapter for greedy(): state is the KvCache ("new" starts one; None = recompute)."""

    def fn(ids, state):
        cache = KvCache(model.cfg.num_layers) if state in (None, "new") else state
        return model.forward(ids, cache), cache

    return fn
