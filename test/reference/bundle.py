"""Tensor bundles, the format of ../shared/fixtures and test/helpers/bundle.ts: a folder with
manifest.json ({"tensors": {name: {"shape", "dtype", "file"}}, "meta"}) and one raw little-endian
file per tensor."""
import json
import os

import numpy as np
import torch

_NP = {"float32": np.float32, "float64": np.float64, "int64": np.int64, "int32": np.int32,
       "uint8": np.uint8, "bool": np.uint8}
_TORCH = {torch.float32: "float32", torch.float64: "float64", torch.int64: "int64",
          torch.int32: "int32", torch.uint8: "uint8", torch.bool: "bool"}


def read_bundle(folder):
    """{name: torch.Tensor}, meta"""
    with open(os.path.join(folder, "manifest.json")) as f:
        manifest = json.load(f)
    out = {}
    for name, e in manifest["tensors"].items():
        arr = np.fromfile(os.path.join(folder, e["file"]), dtype=np.dtype(_NP[e["dtype"]]).newbyteorder("<"))
        t = torch.from_numpy(arr.astype(_NP[e["dtype"]]).reshape(e["shape"]))
        out[name] = t.bool() if e["dtype"] == "bool" else t
    return out, manifest.get("meta", {})


def write_bundle(folder, tensors, meta=None):
    os.makedirs(folder, exist_ok=True)
    manifest = {}
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        dtype = _TORCH[t.dtype]
        arr = t.to(torch.uint8).numpy() if dtype == "bool" else t.numpy()
        fname = name + ".bin"
        arr.astype(np.dtype(_NP[dtype]).newbyteorder("<")).tofile(os.path.join(folder, fname))
        manifest[name] = {"shape": list(t.shape), "dtype": dtype, "file": fname}
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump({"tensors": manifest, "meta": meta or {}}, f, indent=1)
