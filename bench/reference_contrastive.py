"""The loop reference of the contrastive loss (test/reference/contrastive_ref.py) timed forward + backward
on the benchmark's inputs. usage: reference_contrastive.py IN_DIR device warmup iters → one JSON line."""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'test', 'reference'))
from bundle import read_bundle  # noqa: E402
from contrastive_ref import reference_loss  # noqa: E402
from timing import timed  # noqa: E402


def main(in_dir, device, warmup, iters):
    t, m = read_bundle(in_dir)
    L = sum(1 for k in t if k.startswith('f1_'))
    f1 = [t[f'f1_{l}'].to(device).requires_grad_(True) for l in range(L)]
    f2 = [t[f'f2_{l}'].to(device).requires_grad_(True) for l in range(L)]
    ann = t['annotations'].tolist()

    def step():
        loss, _, _ = reference_loss(f1, f2, ann, m)
        loss.backward()
    ms = timed(step, device, int(warmup), int(iters))
    print(json.dumps({'system': f'loop reference (PyTorch {torch.__version__}, torchvision roi_align)', 'ms': ms}))


if __name__ == '__main__':
    main(*sys.argv[1:])
