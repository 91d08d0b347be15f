"""Minimal safetensors writer/reader (no third-party packages).

File layout: u64 little-endian header length N, then N bytes of UTF-8 JSON (padded with spaces to a
multiple of 8), then the tensor bytes packed contiguously, little-endian, row-major. Offsets in the
header are relative to the first byte after the header.
"""
import json
import struct

import numpy as np
import torch

# storage dtype name -> (torch dtype used for rounding, bytes per element)
STORAGE_DTYPES = {"F32": (torch.float32, 4), "BF16": (torch.bfloat16, 2), "F16": (torch.float16, 2)}
TORCH_DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def round_to_storage(t: torch.Tensor, dtype_name: str) -> torch.Tensor:
    """Round an fp32 tensor to the storage dtype (round-to-nearest-even) and return it in that dtype."""
    return t.to(torch.float32).to(STORAGE_DTYPES[dtype_name][0]).contiguous()


def tensor_bytes(t: torch.Tensor) -> bytes:
    """Little-endian row-major bytes of a tensor already in its storage dtype."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    if t.dtype == torch.float16:
        return t.numpy().astype("<f2").tobytes()
    if t.dtype == torch.float32:
        return t.numpy().astype("<f4").tobytes()
    raise ValueError(f"unsupported dtype {t.dtype}")


def dtype_tag(t: torch.Tensor) -> str:
    return {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}[t.dtype]


def write_safetensors(path, tensors: dict) -> int:
    """Write {name: tensor in storage dtype}; returns the number of tensor-data bytes."""
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        data = tensor_bytes(t)
        header[name] = {"dtype": dtype_tag(t), "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    return offset


def read_safetensors(path) -> dict:
    """Read a safetensors file back as {name: float64 tensor} (values upcast exactly)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        buf = raw[base + b:base + e]
        if info["dtype"] == "F32":
            arr = np.frombuffer(buf, dtype="<f4").astype(np.float64)
        elif info["dtype"] == "F16":
            arr = np.frombuffer(buf, dtype="<f2").astype(np.float64)
        elif info["dtype"] == "BF16":
            bits = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32).astype(np.float64)
        else:
            raise ValueError(f"{path}: unsupported dtype {info['dtype']} for {name}")
        out[name] = torch.from_numpy(arr.reshape(info["shape"]).copy())
    return out
