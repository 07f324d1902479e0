"""Minimal safetensors reader/writer (docs/numerics.md#safetensors-and-checkpoints), independent of
the `safetensors` package.

Reader: u64 LE header length, JSON header, byte buffer; offsets relative to the buffer start.
BF16 is returned as torch.bfloat16 (int16 bits reinterpreted), F8_E4M3 as uint8 codes (torch 1.13
has no float8 dtype), F32/F16/I* as their torch dtypes. Sharded checkpoints go through
model.safetensors.index.json. The writer exists for the self-tests' tiny random checkpoints.
"""

import json
import os
import struct

import numpy as np
import torch

# dtype string -> (numpy dtype used to read the bytes, bytes per element)
_NP_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "F8_E4M3": np.uint8, "F8_E5M2": np.uint8,
    "I16": np.int16, "U16": np.uint16, "F16": np.float16, "BF16": np.int16, "I32": np.int32,
    "U32": np.uint32, "F32": np.float32, "F64": np.float64, "I64": np.int64, "U64": np.uint64,
}
_MAX_HEADER = 100 * 1000 * 1000


class SafetensorsError(ValueError):
    pass


class SafetensorsFile:
    """One .safetensors file, read fully into memory (the reference only handles small models)."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            data = f.read()
        if len(data) < 8:
            raise SafetensorsError(f"{path}: file shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", data[:8])
        if n > _MAX_HEADER or 8 + n > len(data):
            raise SafetensorsError(f"{path}: header length {n} exceeds the file ({len(data)} bytes)")
        try:
            header = json.loads(data[8:8 + n].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{path}: header is not UTF-8 JSON: {e}") from e
        self.metadata = header.pop("__metadata__", {}) or {}
        self._buf = memoryview(data)[8 + n:]
        self.infos = {}
        spans = []
        for name, info in header.items():
            dtype = info.get("dtype")
            if dtype not in _NP_DTYPES:
                raise SafetensorsError(f"{path}: tensor {name}: unsupported dtype {dtype!r}")
            shape = [int(s) for s in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
            itemsize = np.dtype(_NP_DTYPES[dtype]).itemsize
            if not (0 <= begin <= end <= len(self._buf)):
                raise SafetensorsError(f"{path}: tensor {name}: offsets {begin}..{end} out of buffer")
            if end - begin != int(np.prod(shape, dtype=np.int64)) * itemsize:
                raise SafetensorsError(f"{path}: tensor {name}: byte size does not match {shape}")
            self.infos[name] = (dtype, shape, begin, end)
            spans.append((begin, end))
        spans.sort()
        pos = 0
        for b, e in spans:
            if b != pos:
                raise SafetensorsError(f"{path}: tensor data does not tile the buffer at {pos}")
            pos = e
        if pos != len(self._buf):
            raise SafetensorsError(f"{path}: {len(self._buf) - pos} trailing bytes after tensors")

    def get(self, name):
        dtype, shape, begin, end = self.infos[name]
        arr = np.frombuffer(self._buf[begin:end], dtype=_NP_DTYPES[dtype]).reshape(shape).copy()
        t = torch.from_numpy(arr)
        if dtype == "BF16":
            t = t.view(torch.bfloat16)
        return t

    def dtype(self, name):
        return self.infos[name][0]


class Checkpoint:
    """All tensors of a model directory (single file or sharded with an index)."""

    def __init__(self, model_dir):
        index = os.path.join(model_dir, "model.safetensors.index.json")
        single = os.path.join(model_dir, "model.safetensors")
        self.files = {}
        self.where = {}
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            for name, shard in weight_map.items():
                if shard not in self.files:
                    self.files[shard] = SafetensorsFile(os.path.join(model_dir, shard))
                if name not in self.files[shard].infos:
                    raise SafetensorsError(f"index maps {name} to {shard}, which lacks it")
                self.where[name] = self.files[shard]
        elif os.path.exists(single):
            f = SafetensorsFile(single)
            self.files["model.safetensors"] = f
            self.where = {name: f for name in f.infos}
        else:
            raise SafetensorsError(f"{model_dir}: no model.safetensors(.index.json)")

    def __contains__(self, name):
        return name in self.where

    def names(self):
        return list(self.where)

    def get(self, name):
        if name not in self.where:
            raise KeyError(f"checkpoint lacks tensor {name}")
        return self.where[name].get(name)

    def dtype(self, name):
        return self.where[name].dtype(name)


def _tensor_bytes(t):
    """(dtype string, raw little-endian bytes) for a torch tensor. uint8 tensors are written as
    F8_E4M3 codes when `fp8` names them (see write_safetensors)."""
    if t.dtype == torch.bfloat16:
        return "BF16", t.contiguous().view(torch.int16).numpy().tobytes()
    table = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64", torch.int32: "I32",
             torch.uint8: "U8", torch.int8: "I8"}
    if t.dtype not in table:
        raise SafetensorsError(f"cannot write dtype {t.dtype}")
    return table[t.dtype], t.contiguous().numpy().tobytes()


def write_safetensors(path, tensors, fp8_names=(), metadata=None):
    """Writes {name: tensor} to path. Names in fp8_names must be uint8 e4m3 codes (dtype F8_E4M3)."""
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        dtype, raw = _tensor_bytes(t)
        if name in fp8_names:
            if t.dtype != torch.uint8:
                raise SafetensorsError(f"{name}: fp8 tensors must be uint8 codes")
            dtype = "F8_E4M3"
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    hdr = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hdr += b" " * ((8 - len(hdr) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hdr)))
        f.write(hdr)
        for raw in blobs:
            f.write(raw)
