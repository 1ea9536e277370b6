"""Inference timing of the PyTorch references on the same synthetic input as bench/inference.ts:
the reference RetinaNet of test/reference (pytorch-retinanet layout, torchvision-style
post-processing per image) and torchvision's retinanet_resnet50_fpn (random weights, no resize).
usage: reference_inference.py DEVICE DEPTH SIZE BATCHES WARMUP ITERS   → JSON lines on stdout"""
import json
import os
import sys

import torch
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "test", "reference"))
from timing import timed  # noqa: E402 (bench/timing.py, beside this file)
from retinanet_ref import RetinaNetRef, postprocess, randomise, retinanet_anchors  # noqa: E402



def main():
    device, depth, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    batches = [int(b) for b in sys.argv[4].split(",")]
    warmup, iters = int(sys.argv[5]), int(sys.argv[6])
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    ref = RetinaNetRef(depth, 80).eval()
    randomise(ref, 1)
    ref.to(device)
    anchors = retinanet_anchors(size, size).to(device)
    tv = None
    if depth == 50:
        tv = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91,
                                                                 min_size=size, max_size=size).eval().to(device)
    for b in batches:
        x = torch.randn(b, 3, size, size, device=device)
        limits = torch.full((b, 2), float(size), device=device)

        def run_ref():
            (_, _, _), ps, reg, cls = ref(x)
            sizes = [p.shape[2] * p.shape[3] * 9 for p in ps]
            out = postprocess(reg, cls, anchors, limits, sizes, 0.05, 1000, 0.5, 100)
            return [o[0].cpu() for o in out]

        s = timed(run_ref, device, warmup, iters)
        print(json.dumps({"system": "reference RetinaNet (PyTorch %s)" % torch.__version__, "batch": b, "ms": s}), flush=True)
        if tv is not None:
            imgs = list(x)

            def run_tv():
                return [d["boxes"].cpu() for d in tv(imgs)]

            s = timed(run_tv, device, warmup, iters)
            print(json.dumps({"system": "torchvision retinanet_resnet50_fpn", "batch": b, "ms": s}), flush=True)


if __name__ == "__main__":
    main()
