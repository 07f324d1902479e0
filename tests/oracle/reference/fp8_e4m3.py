"""float8_e4m3fn emulation for torch builds without a float8 dtype (Debian's torch 1.13).

Decoding is a 256-entry table (docs/numerics.md#fp8-block-format). Encoding saturates to +-448
first (as every FP8 quantizer in transformers/vLLM clamps before the cast) and then rounds to
nearest, ties to the even code. Because codes 0..126 are monotonic in value and a code's parity
is its mantissa LSB, "ties to even mantissa" is the same as "ties to the even code", including at
the subnormal/normal boundary.
"""

import numpy as np
import torch

E4M3_MAX = 448.0


def _build_table():
    codes = np.arange(256, dtype=np.int64)
    sign = codes >> 7
    exp = (codes >> 3) & 0xF
    man = codes & 0x7
    mag = np.where(exp == 0, (man / 8.0) * 2.0**-6, (1.0 + man / 8.0) * np.exp2(exp - 7.0))
    val = np.where(sign == 1, -mag, mag)
    val[(exp == 15) & (man == 7)] = np.nan
    return val.astype(np.float32)


# DECODE_TABLE[c] is the value of code c as float32 (NaN for 0x7F and 0xFF).
DECODE_TABLE = _build_table()
# Non-negative finite values, codes 0x00..0x7E, strictly increasing.
_POSITIVE = DECODE_TABLE[:127].astype(np.float64)


def decode(codes):
    """uint8 codes (numpy array or torch uint8 tensor) -> float32 torch tensor of the same shape."""
    if isinstance(codes, torch.Tensor):
        codes = codes.numpy()
    codes = np.asarray(codes, dtype=np.uint8)
    return torch.from_numpy(DECODE_TABLE[codes])


def encode(x):
    """float32 values (torch tensor or numpy array) -> uint8 codes (torch tensor), same shape.

    Saturating round-to-nearest-even: |x| >= 448 gives 0x7E/0xFE, NaN gives 0x7F (sign kept),
    values that round to zero keep their sign (-0 -> 0x80), as torch's float8_e4m3fn cast does.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().to(torch.float32).numpy()
    x = np.asarray(x, dtype=np.float32)
    a = np.minimum(np.abs(x).astype(np.float64), E4M3_MAX)
    hi = np.searchsorted(_POSITIVE, a, side="left")  # first code with value >= a
    hi = np.minimum(hi, 126)
    lo = np.maximum(hi - 1, 0)
    d_lo = a - _POSITIVE[lo]
    d_hi = _POSITIVE[hi] - a
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    code = np.where(pick_hi, hi, lo).astype(np.uint8)
    code = np.where(np.signbit(x), code | 0x80, code).astype(np.uint8)
    code = np.where(np.isnan(x), np.uint8(0x7F) | (code & 0x80), code).astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(code))


def quantize_activation_groups(x_bf16, group=128):
    """Per-token, per-`group` dynamic quantization (transformers act_quant with vLLM's eps/clamp).

    x_bf16: [M, K] bf16. Returns (codes [M, K] uint8, scales [M, ceil(K/group)] float32) where
    s = max(amax, 1e-10) / 448 in fp32 and code = e4m3(clamp(x / s, -448, 448)).
    """
    m, k = x_bf16.shape
    nblk = (k + group - 1) // group
    x = x_bf16.to(torch.float32)
    codes = torch.empty((m, k), dtype=torch.uint8)
    scales = torch.empty((m, nblk), dtype=torch.float32)
    for b in range(nblk):
        xs = x[:, b * group:(b + 1) * group]
        amax = xs.abs().amax(dim=1, keepdim=True)
        s = torch.clamp(amax, min=1e-10) / torch.tensor(E4M3_MAX, dtype=torch.float32)
        q = torch.clamp(xs / s, -E4M3_MAX, E4M3_MAX)
        codes[:, b * group:(b + 1) * group] = encode(q)
        scales[:, b] = s[:, 0]
    return codes, scales


def quantize_weight_blocks(w_f32, block=128):
    """Block-wise weight quantization as transformers' quantizer does (scale = amax/448 per block).

    w_f32: [N, K] float32. Returns (codes [N, K] uint8, scale_inv [ceil(N/b), ceil(K/b)] float32).
    Used only to build test checkpoints; the reference itself reads quantized checkpoints.
    """
    n, k = w_f32.shape
    nb, kb = (n + block - 1) // block, (k + block - 1) // block
    codes = torch.empty((n, k), dtype=torch.uint8)
    scale_inv = torch.empty((nb, kb), dtype=torch.float32)
    for i in range(nb):
        for j in range(kb):
            blk = w_f32[i * block:(i + 1) * block, j * block:(j + 1) * block]
            amax = float(blk.abs().max())
            s = np.float32(max(amax, 1e-12) / E4M3_MAX)
            codes[i * block:(i + 1) * block, j * block:(j + 1) * block] = encode(
                torch.clamp(blk / torch.tensor(s), -E4M3_MAX, E4M3_MAX))
            scale_inv[i, j] = float(s)
    return codes, scale_inv
