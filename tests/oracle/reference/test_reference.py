"""Self-tests of the CPU reference: FP8 emulation, safetensors I/O, numerics and model invariants.

Run: /usr/bin/python3 tests/oracle/reference/test_reference.py  (exit 77 = skipped, no torch).
"""

import copy
import fractions
import json
import math
import os
import random
import struct
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import numpy as np
    import torch
except ImportError:  # pragma: no cover
    print("torch/numpy missing: skipping")
    sys.exit(77)

import fp8_e4m3  # noqa: E402
import qwen3_moe_reference as ref  # noqa: E402
import tiny_checkpoint  # noqa: E402
from safetensors_io import SafetensorsError, write_safetensors  # noqa: E402

BF16 = torch.bfloat16


def scalar_encode(x):
    """Independent e4m3fn encoder on exact rationals: saturate, round half to even on the grid."""
    if math.isnan(x):
        return 0x7F
    sign = 0x80 if math.copysign(1.0, x) < 0 else 0
    a = fractions.Fraction(min(abs(x), 448.0))
    if a == 0:
        return sign
    # Spacing of the grid holding a: 2^-9 below 2^-6 (subnormals), else 2^(e-3) for [2^e, 2^(e+1)).
    e = max(math.floor(math.log2(a)), -6)
    while fractions.Fraction(2) ** e > a and e > -6:
        e -= 1
    while fractions.Fraction(2) ** (e + 1) <= a:
        e += 1
    ulp = fractions.Fraction(2) ** (e - 3)
    n = a / ulp
    q = math.floor(n)
    rem = n - q
    if rem > fractions.Fraction(1, 2) or (rem == fractions.Fraction(1, 2) and q % 2 == 1):
        q += 1
    value = q * ulp
    for code in range(127):
        if fractions.Fraction(float(fp8_e4m3.DECODE_TABLE[code])) == value:
            return sign | code
    raise AssertionError(f"{x} rounded to {value}, not on the grid")


class Fp8Test(unittest.TestCase):
    def test_decodes_known_codes(self):
        t = fp8_e4m3.DECODE_TABLE
        self.assertEqual(t[0x38], 1.0)
        self.assertEqual(t[0x7E], 448.0)
        self.assertEqual(t[0xFE], -448.0)
        self.assertEqual(t[0x01], 2.0 ** -9)
        self.assertEqual(t[0x08], 2.0 ** -6)
        self.assertTrue(math.isnan(t[0x7F]) and math.isnan(t[0xFF]))
        self.assertEqual(int(np.isnan(t).sum()), 2)

    def test_encode_inverts_decode_for_every_finite_code(self):
        codes = np.array([c for c in range(256) if (c & 0x7F) != 0x7F], dtype=np.uint8)
        values = fp8_e4m3.decode(codes)
        back = fp8_e4m3.encode(values).numpy()
        np.testing.assert_array_equal(back, codes)
        np.testing.assert_array_equal(fp8_e4m3.decode(back).numpy(), values.numpy())

    def test_midpoints_round_to_even_code_and_neighbours_round_away(self):
        t = fp8_e4m3.DECODE_TABLE.astype(np.float64)
        for c in range(126):
            mid = np.float32((t[c] + t[c + 1]) / 2)
            self.assertEqual(float(mid), (t[c] + t[c + 1]) / 2)  # exact in fp32
            even = c if c % 2 == 0 else c + 1
            for sign, x in ((0, mid), (0x80, -mid)):
                self.assertEqual(int(fp8_e4m3.encode(np.array([x]))[0]), sign | even, (c, x))
            above = np.nextafter(mid, np.float32(np.inf), dtype=np.float32)
            below = np.nextafter(mid, np.float32(0), dtype=np.float32)
            self.assertEqual(int(fp8_e4m3.encode(np.array([above]))[0]), c + 1)
            self.assertEqual(int(fp8_e4m3.encode(np.array([below]))[0]), c)

    def test_saturates_and_keeps_nan_and_signed_zero(self):
        x = np.array([448.0, 464.0, 1e9, np.inf, -1e9, -np.inf, np.nan, -0.0, 2.0 ** -11,
                      -(2.0 ** -11), 2.0 ** -10, 1.5 * 2.0 ** -10], dtype=np.float32)
        got = fp8_e4m3.encode(x).numpy().tolist()
        self.assertEqual(got, [0x7E, 0x7E, 0x7E, 0x7E, 0xFE, 0xFE, 0x7F, 0x80, 0x00, 0x80, 0x00,
                               0x01])

    def test_matches_independent_scalar_encoder_on_random_values(self):
        rng = random.Random(1234)
        xs = []
        for _ in range(3000):
            xs.append(rng.choice([-1, 1]) * 2.0 ** rng.uniform(-12, 9.5))
        xs = np.array(xs, dtype=np.float32)
        got = fp8_e4m3.encode(xs).numpy()
        for x, c in zip(xs.tolist(), got.tolist()):
            self.assertEqual(c, scalar_encode(x), x)

    @unittest.skipUnless(hasattr(torch, "float8_e4m3fn"), "torch has no float8_e4m3fn")
    def test_matches_torch_float8_cast(self):
        x = torch.randn(100000, generator=torch.Generator().manual_seed(0)) * 100
        x = torch.clamp(x, -448, 448)
        want = x.to(torch.float8_e4m3fn).view(torch.uint8)
        self.assertTrue(torch.equal(fp8_e4m3.encode(x), want))

    def test_activation_quantization_scales_per_token_group(self):
        x = torch.zeros((2, 256), dtype=BF16)
        x[0, 0] = 3.5  # group 0 amax 3.5 -> s = 3.5/448, x/s = 448
        x[0, 1] = -1.75  # -> -224 exactly
        x[1, 200] = 0.25  # group 1 of row 1
        codes, scales = fp8_e4m3.quantize_activation_groups(x)
        self.assertEqual(scales[0, 0].item(), np.float32(3.5) / np.float32(448))
        self.assertEqual(scales[0, 1].item(), np.float32(1e-10) / np.float32(448))  # eps group
        self.assertEqual(codes[0, 0].item(), 0x7E)
        self.assertEqual(fp8_e4m3.DECODE_TABLE[codes[0, 1].item()], -224.0)
        self.assertEqual(codes[0, 2].item(), 0)
        self.assertEqual(codes[1, 200].item(), 0x7E)


class SafetensorsTest(unittest.TestCase):
    def test_round_trips_dtypes(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "a.safetensors")
            b = torch.tensor([[1.5, -2.0], [0.0, 3.25]], dtype=BF16)
            f = torch.tensor([1.0, 2.5, -7.0], dtype=torch.float32)
            c = torch.tensor([0x38, 0x7E, 0x81], dtype=torch.uint8)
            write_safetensors(path, {"b": b, "f": f, "c": c}, fp8_names={"c"})
            from safetensors_io import SafetensorsFile
            sf = SafetensorsFile(path)
            self.assertEqual(sf.dtype("c"), "F8_E4M3")
            self.assertTrue(torch.equal(sf.get("b"), b))
            self.assertTrue(torch.equal(sf.get("f"), f))
            self.assertEqual(sf.get("c").tolist(), [0x38, 0x7E, 0x81])

    def test_rejects_truncated_and_bad_headers(self):
        from safetensors_io import SafetensorsFile
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "a.safetensors")
            write_safetensors(path, {"x": torch.ones(4, dtype=torch.float32)})
            with open(path, "rb") as f:
                data = f.read()
            bad = os.path.join(d, "bad.safetensors")
            for blob in (data[:-1], data[:5], struct.pack("<Q", 10 ** 9) + data[8:],
                         data.replace(b'"F32"', b'"F99"')):
                with open(bad, "wb") as f:
                    f.write(blob)
                with self.assertRaises(SafetensorsError):
                    SafetensorsFile(bad)


class NumericsTest(unittest.TestCase):
    def test_rms_norm_rounds_before_weight(self):
        g = torch.Generator().manual_seed(5)
        x = torch.randn((4, 128), generator=g).to(BF16)
        w = (1 + 0.3 * torch.randn(128, generator=g)).to(BF16)
        xf = x.float().numpy()
        var = np.float32((xf.astype(np.float64) ** 2).mean(-1, keepdims=True))
        inv = np.float32(1) / np.sqrt(var + np.float32(1e-6), dtype=np.float32)
        normed = torch.from_numpy(xf * inv).to(BF16)  # rounded before the weight multiply
        want = (normed.float() * w.float()).to(BF16)
        once = (torch.from_numpy(xf * inv) * w.float()).to(BF16)  # a single rounding
        got = ref.rms_norm(x, w, 1e-6)
        self.assertTrue(torch.equal(got, want))
        self.assertFalse(torch.equal(got, once))

    def test_rope_is_identity_at_position_zero(self):
        cfg = ref.Config(tiny_checkpoint.BASE_CONFIG)
        inv, scaling = ref.rope_inv_freq(cfg)
        self.assertEqual(scaling, 1.0)
        self.assertEqual(inv[1].item(), np.float32(1.0) / np.float32(1e6) ** (np.float32(2 / 128)))
        cos, sin = ref.rope_cos_sin(inv, scaling, torch.tensor([0, 5]))
        x = torch.randn((2, 3, 128)).to(BF16)
        self.assertTrue(torch.equal(ref.apply_rope(x, cos, sin)[0], x[0]))
        self.assertFalse(torch.equal(ref.apply_rope(x, cos, sin)[1], x[1]))

    def test_yarn_matches_formula(self):
        raw = dict(tiny_checkpoint.BASE_CONFIG, max_position_embeddings=131072,
                   rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                 "original_max_position_embeddings": 32768})
        cfg = ref.Config(raw)
        inv, scaling = ref.rope_inv_freq(cfg)
        self.assertAlmostEqual(scaling, 0.1 * math.log(4.0) + 1.0, places=12)
        base, dim = 1e6, 128
        low = math.floor(dim * math.log(32768 / (32 * 2 * math.pi)) / (2 * math.log(base)))
        high = math.ceil(dim * math.log(32768 / (1 * 2 * math.pi)) / (2 * math.log(base)))
        for i in (0, low - 1, low, (low + high) // 2, high, 63):
            ext = 1.0 / base ** (2 * i / dim)
            ramp = min(max((i - low) / (high - low), 0.0), 1.0)
            want = (ext / 4.0) * ramp + ext * (1 - ramp)
            self.assertAlmostEqual(inv[i].item() / want, 1.0, places=5, msg=str(i))

    def test_fp8_linear_is_exact_when_quantization_is_exact(self):
        g = torch.Generator().manual_seed(3)
        codes = torch.randint(0, 0x7E, (256, 256), generator=g, dtype=torch.int64)
        codes = torch.where(torch.rand((256, 256), generator=g) < 0.5, codes, codes | 0x80)
        codes = codes.to(torch.uint8)
        scale_inv = torch.tensor([[2.0 ** -4, 2.0 ** -7], [2.0 ** -5, 2.0 ** -3]])
        lin = ref.Linear(codes, scale_inv)
        w_bf16 = lin.dequantized().to(BF16)
        self.assertTrue(torch.equal(w_bf16.float(), lin.dequantized()))  # representable
        # Activations: e4m3 values times 2^-3 with a 448 in every group -> s = 2^-3 exactly.
        a_codes = torch.randint(0, 0x7E, (3, 256), generator=g, dtype=torch.int64).to(torch.uint8)
        x = (fp8_e4m3.decode(a_codes) * 2.0 ** -3)
        x[:, 0], x[:, 128] = 56.0, -56.0
        x = x.to(BF16)
        got = lin(x)
        want = ref.Linear(w_bf16)(x)
        self.assertTrue(torch.equal(got, want))

    def test_fp8_linear_tracks_dequantized_bf16(self):
        g = torch.Generator().manual_seed(4)
        w = torch.randn((128, 256), generator=g) * 0.05
        codes, s = fp8_e4m3.quantize_weight_blocks(w)
        lin = ref.Linear(codes, s)
        x = torch.randn((4, 256), generator=g).to(BF16)
        full = x.double() @ lin.dequantized().double().T
        err = (lin(x).double() - full).abs().max() / full.abs().max()
        self.assertLess(err.item(), 0.05)


class ModelTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cfg = tiny_checkpoint.BASE_CONFIG
        cls.tensors = tiny_checkpoint.random_tensors(cfg, seed=7)
        cls.bf16_dir = os.path.join(cls.tmp.name, "bf16")
        cls.fp8_dir = os.path.join(cls.tmp.name, "fp8")
        tiny_checkpoint.write_checkpoint(cls.bf16_dir, cfg, cls.tensors)
        tiny_checkpoint.write_checkpoint(cls.fp8_dir, cfg, cls.tensors, fp8=True)
        cls.bf16 = ref.Qwen3MoeReference(cls.bf16_dir)
        cls.fp8 = ref.Qwen3MoeReference(cls.fp8_dir)
        cls.ids = [(1103515245 * i + 12345) % 512 for i in range(23)]

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def _incremental_equals_recompute(self, model):
        full = model.forward(self.ids, all_logits=True)
        cache = ref.KvCache(model.cfg.num_layers)
        rows = [model.forward(self.ids[:5], cache, all_logits=True)]
        for start in range(5, len(self.ids), 3):
            rows.append(model.forward(self.ids[start:start + 3], cache, all_logits=True))
        self.assertTrue(torch.equal(torch.cat(rows), full))
        cache = ref.KvCache(model.cfg.num_layers)
        for i, tok in enumerate(self.ids):
            self.assertTrue(torch.equal(model.forward([tok], cache), full[i]), i)

    def test_kv_cache_decode_equals_recompute_bf16(self):
        self._incremental_equals_recompute(self.bf16)

    def test_kv_cache_decode_equals_recompute_fp8(self):
        self._incremental_equals_recompute(self.fp8)

    def test_fp8_model_tracks_bf16_model(self):
        a, b = self.bf16.forward(self.ids), self.fp8.forward(self.ids)
        self.assertFalse(torch.equal(a, b))
        rel = ((a - b).norm() / a.norm()).item()
        self.assertLess(rel, 0.1)
        self.assertEqual(a.dtype, torch.float32)
        self.assertTrue(torch.equal(a.to(BF16).float(), a))  # logits are bf16 values

    def test_first_token_attention_returns_value_rows(self):
        m = self.bf16
        h = ref.rms_norm(m.embed[[17]], m.layers[0]["in_norm"], 1e-6)
        got = m.attention(0, h, torch.tensor([0]), ref.KvCache(2))
        v = m.layers[0]["v"](h).view(1, 2, 128)
        want = m.layers[0]["o"](v.repeat_interleave(2, dim=1).reshape(1, 512))
        self.assertTrue(torch.equal(got, want))

    def test_attention_rounds_probabilities_to_bf16(self):
        m = self.bf16
        L = m.layers[1]
        h = ref.rms_norm(m.embed[[5, 9, 250]], L["in_norm"], 1e-6)
        pos = torch.tensor([0, 1, 2])
        q = ref.rms_norm(L["q"](h).view(3, 4, 128), L["q_norm"], 1e-6)
        k = ref.rms_norm(L["k"](h).view(3, 2, 128), L["k_norm"], 1e-6)
        v = L["v"](h).view(3, 2, 128)
        cos, sin = ref.rope_cos_sin(m.inv_freq, 1.0, pos)
        q, k = ref.apply_rope(q, cos, sin), ref.apply_rope(k, cos, sin)
        out = np.zeros((3, 4, 128), dtype=np.float32)
        for t in range(3):
            for hq in range(4):
                qq = q[t, hq].double().numpy()
                kk, vv = k[:t + 1, hq // 2].double().numpy(), v[:t + 1, hq // 2].double().numpy()
                s = np.float32(kk @ qq) * np.float32(128 ** -0.5)
                e = np.exp(s.astype(np.float64) - s.max())
                p = torch.from_numpy((e / e.sum()).astype(np.float32)).to(BF16).double().numpy()
                out[t, hq] = (p @ vv).astype(np.float32)
        want = L["o"](torch.from_numpy(out).to(BF16).reshape(3, 512))
        got = m.attention(1, h, pos, ref.KvCache(2))
        self.assertTrue(torch.equal(got, want))

    def test_rope_rounds_each_product_and_the_sum(self):
        x = torch.randn((1, 1, 128), generator=torch.Generator().manual_seed(8)).to(BF16)
        inv, _ = ref.rope_inv_freq(ref.Config(tiny_checkpoint.BASE_CONFIG))
        cos, sin = ref.rope_cos_sin(inv, 1.0, torch.tensor([37]))
        c, s_, xf = cos[0].float(), sin[0].float(), x[0, 0].float()
        i = 3
        a = (xf[i] * c[i]).to(BF16).float() + (-xf[i + 64] * s_[i]).to(BF16).float()
        b = (xf[i + 64] * c[i + 64]).to(BF16).float() + (xf[i] * s_[i + 64]).to(BF16).float()
        got = ref.apply_rope(x, cos, sin)[0, 0]
        self.assertEqual(got[i].item(), a.to(BF16).item())
        self.assertEqual(got[i + 64].item(), b.to(BF16).item())
        self.assertEqual(cos[0, i].item(), torch.tensor(math.cos(37 * inv[i].item())).to(BF16).item())

    def test_router_ties_pick_lower_ids_with_equal_weights(self):
        m = copy.copy(self.bf16)
        m.layers = [dict(L) for L in m.layers]
        m.layers[0]["router"] = ref.Linear(torch.zeros((16, 128), dtype=BF16))
        _, idx, w = m.moe(0, m.embed[[3, 4]])
        self.assertEqual(idx.tolist(), [[0, 1, 2, 3], [0, 1, 2, 3]])
        self.assertEqual(w.tolist(), [[0.25] * 4] * 2)

    def test_sharded_checkpoint_and_v5_config_give_identical_logits(self):
        cfg = dict(tiny_checkpoint.BASE_CONFIG)
        theta = cfg.pop("rope_theta")
        cfg.pop("rope_scaling")
        cfg["num_local_experts"] = cfg.pop("num_experts")
        cfg["rope_parameters"] = {"rope_theta": theta, "rope_type": "default"}
        cfg["dtype"] = cfg.pop("torch_dtype")
        d = os.path.join(self.tmp.name, "v5_sharded")
        tiny_checkpoint.write_checkpoint(d, cfg, self.tensors, shards=3)
        m = ref.Qwen3MoeReference(d)
        self.assertEqual(len(m._ck.files), 3)
        self.assertTrue(torch.equal(m.forward(self.ids), self.bf16.forward(self.ids)))

    def test_top1_identical_experts_equal_dense_model(self):
        moe_cfg = dict(tiny_checkpoint.BASE_CONFIG, num_experts_per_tok=1)
        t = tiny_checkpoint.random_tensors(moe_cfg, seed=11, identical_experts=True)
        dense_cfg = dict(moe_cfg, model_type="qwen3", intermediate_size=128)
        dense_t = {n: w for n, w in t.items() if ".mlp." not in n}
        for i in range(moe_cfg["num_hidden_layers"]):
            for n in ("gate", "up", "down"):
                dense_t[f"model.layers.{i}.mlp.{n}_proj.weight"] = t[
                    f"model.layers.{i}.mlp.experts.0.{n}_proj.weight"]
        dm, dd = os.path.join(self.tmp.name, "m1"), os.path.join(self.tmp.name, "d1")
        tiny_checkpoint.write_checkpoint(dm, moe_cfg, t)
        tiny_checkpoint.write_checkpoint(dd, dense_cfg, dense_t)
        moe, dense = ref.Qwen3MoeReference(dm), ref.Qwen3MoeReference(dd)
        # top-1 + norm_topk_prob: weight is exactly 1.0, so the MoE is the dense MLP bit for bit.
        self.assertTrue(torch.equal(moe.forward(self.ids), dense.forward(self.ids)))
        # top-4 of identical experts: weights sum to 1 within fp32 rounding: nearly equal.
        moe4_cfg = dict(moe_cfg, num_experts_per_tok=4)
        d4 = os.path.join(self.tmp.name, "m4")
        tiny_checkpoint.write_checkpoint(d4, moe4_cfg, t)
        a, b = ref.Qwen3MoeReference(d4).forward(self.ids), dense.forward(self.ids)
        self.assertLess(((a - b).abs().max() / b.abs().max()).item(), 0.02)
        self.assertEqual(ref.argmax_first(a), ref.argmax_first(b))

    def test_rejects_out_of_range_token(self):
        with self.assertRaises(ValueError):
            self.bf16.forward([512])

    def test_greedy_cache_matches_recompute(self):
        fn = ref.reference_forward_fn(self.bf16)
        p1, a, gaps = ref.greedy(fn, self.ids[:7], 6, [151645], use_cache=True)
        p2, b, _ = ref.greedy(fn, self.ids[:7], 6, [151645], use_cache=False)
        self.assertEqual(a, b)
        self.assertEqual(len(a), 6)
        self.assertTrue(torch.equal(p1, p2))
        self.assertTrue(all(g >= 0 for g in gaps))


class GreedyTest(unittest.TestCase):
    def test_stops_after_eos_and_breaks_ties_to_lowest_id(self):
        script = [[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 5.0], [9.0, 0.0, 0.0, 0.0]]
        calls = []

        def fn(ids, state):
            calls.append(list(ids))
            return torch.tensor(script[len(calls) - 1]), state

        _, out, gaps = ref.greedy(fn, [7], 10, eos_ids=[3])
        self.assertEqual(out, [1, 3])
        self.assertEqual(gaps, [0.0, 5.0])
        self.assertEqual(calls, [[7], [1]])


if __name__ == "__main__":
    unittest.main(verbosity=2)
