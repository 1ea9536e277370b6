"""safetensors from the PyTorch side, for round-trip tests. Uses the `safetensors` package where it
is installed (GPU host); elsewhere (Debian CI) reads and writes the format directly from its spec.

usage: safetensors_io.py read FILE OUT_DIR        → OUT_DIR bundle of every tensor (+ meta: the metadata)
       safetensors_io.py write WEIGHTS.pt FILE    → FILE from a torch.save'd state_dict
"""
import json
import struct
import sys

import torch

from bundle import write_bundle

try:
    import safetensors.torch as st
except ImportError:
    st = None

_DT = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16,
       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def read(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    if st is not None:
        return st.load_file(path), meta, "safetensors"
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        buf = bytearray(raw[8 + n + b:8 + n + end])
        t = torch.frombuffer(buf, dtype=_DT[e["dtype"]]) if len(buf) else torch.empty(0, dtype=_DT[e["dtype"]])
        out[name] = t.reshape(e["shape"]).clone()
    return out, meta, "spec"


def write(tensors, path):
    if st is not None:
        st.save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})
        return
    names = sorted(tensors)
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    inv = {v: k for k, v in _DT.items()}
    for k in names:
        t = tensors[k].contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[k] = {"dtype": inv[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


if __name__ == "__main__":
    if sys.argv[1] == "read":
        tensors, meta, how = read(sys.argv[2])
        write_bundle(sys.argv[3], tensors, {"metadata": meta, "reader": how})
    else:
        write(torch.load(sys.argv[2]), sys.argv[3])
