"""Training throughput of the NanoDet-Plus reference (test/reference/nanodet_shufflenet_ref.py: NanoDet's
ShuffleNetV2, Ghost-PAN, NanoDetPlusHead and the AGM in NanoDet's module layout, with the per-image DSL
assignment and losses of test/reference/nanodet_ref.py as NanoDet-Plus computes them) on the batch that
bench/nanodet_latency.ts --train wrote. NanoDet-Plus' optimiser: AdamW lr 1e-3, weight decay 0.05,
gradients clipped to norm 35 (its configs).

usage: reference_nanodet_train.py DIR DEVICE WIDTH PAN HEAD AUX BATCH SIZE WARMUP STEPS PRECISIONS → JSON lines"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "test", "reference"))
from nanodet_shufflenet_ref import NanoDetPlusM  # noqa: E402
from train_ref import nanodet_plus_step  # noqa: E402
from timing import timed  # noqa: E402  (bench/, this script's folder)


def main():
    d, device, width = sys.argv[1], sys.argv[2], sys.argv[3]
    pan, head, aux, B, S, warmup, steps = (int(v) for v in sys.argv[4:11])
    precisions = sys.argv[11].split(",")
    images = torch.from_numpy(np.fromfile(os.path.join(d, "images.f32"), dtype=np.float32).reshape(B, 3, S, S)).to(device)
    ann = torch.from_numpy(np.fromfile(os.path.join(d, "annotations.f32"), dtype=np.float32).reshape(B, -1, 5)).to(device)
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    m = {"numClasses": 80, "regMax": 7, "strides": [8, 16, 32, 64]}
    for precision in precisions:
        amp = precision == "bf16"
        torch.manual_seed(0)
        model = NanoDetPlusM(width, pan, head, aux, 80).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
                cls, box = nanodet_plus_step(model, m, {"detachEpoch": 10}, images, ann, 0)
            (cls + box).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 35)
            opt.step()

        ms = timed(step, device, warmup, steps)
        print(json.dumps({"system": f"reference NanoDet-Plus-m ({width}, per-image DSL loop)", "precision": precision,
                          "imagesPerSecond": 1000 * B / ms, "msPerStep": ms}), flush=True)
        del model, opt


if __name__ == "__main__":
    main()
