"""Reference for test/parity-ops.test.ts: the LibTorch ops the binding exposes, computed by PyTorch.

usage: ops.py IN_DIR OUT_DIR [device]
IN_DIR holds a, b (matrices [..., n, k], [..., k, m]), x (any shape, positive) and y (broadcasts with x).
"""
import sys

import torch

from bundle import read_bundle, write_bundle


def main(in_dir, out_dir, device="cpu"):
    t, _ = read_bundle(in_dir)
    a, b, x, y = (t[k].to(device) for k in ("a", "b", "x", "y"))
    out = {
        "matmul": torch.matmul(a, b),
        "sigmoid": torch.sigmoid(x),
        "exp": torch.exp(x),
        "log": torch.log(x),
        "relu": torch.relu(x - 0.5),
        "add": x + y,
        "sub": x - y,
        "mul": x * y,
        "div": x / y,
        "softmax_last": torch.softmax(x, dim=-1),
        "log_softmax_0": torch.log_softmax(x, dim=0),
        "sum_all": x.sum(),
        "sum_0_2": x.sum(dim=(0, 2)),
    }
    write_bundle(out_dir, out, {"torch": torch.__version__, "device": device})


if __name__ == "__main__":
    main(*sys.argv[1:])
