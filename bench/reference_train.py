"""Training throughput of the PyTorch references on the batch bench/train_throughput.ts wrote:
torchvision's retinanet_resnet50_fpn (random weights, 80 classes, no resize: min/max size = the input
side; its default training setup: BatchNorm in training mode when no weights are given) and the
pytorch-retinanet-layout reference model of test/reference with pytorch-retinanet's per-image focal
loss (BatchNorm frozen, gradients clipped to 0.1 as its train.py). Same optimizer as the onestage
side (SGD lr 0.01 momentum 0.9 wd 1e-4, or AdamW lr 1e-4 wd 1e-4; torch.optim's defaults: foreach on
CUDA). Also the FLOPs of a training step of the model (torch.utils.flop_counter over forward + backward
of the reference model, the architecture onestage builds) and the measured bf16 matrix-product rate.

usage: reference_train.py DIR DEVICE DEPTH BATCH SIZE WARMUP STEPS PRECISIONS OPTIMIZER → JSON lines"""
import json
import os
import sys
import time

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "test", "reference"))
import losses_ref  # noqa: E402
from losses_ref import focal_retinanet  # noqa: E402
from retinanet_ref import RetinaNetRef, retinanet_anchors  # noqa: E402
from timing import timed  # noqa: E402  (bench/, this script's folder)


def optimizer_for(params, kind):
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)


def timed_steps(step, device, warmup, steps):
    seconds = timed(step, device, warmup, steps, reset_peak=True) * steps / 1e3
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return seconds, peak


def row(system, precision, batch, steps, seconds, peak):
    return {"system": system, "precision": precision, "imagesPerSecond": batch * steps / seconds,
            "msPerStep": 1000 * seconds / steps, "peakMiB": peak}


def main():
    d, device, depth, B, S = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    warmup, steps, precisions, kind = int(sys.argv[6]), int(sys.argv[7]), sys.argv[8].split(","), sys.argv[9]
    images = torch.from_numpy(np.fromfile(os.path.join(d, "images.f32"), dtype=np.float32).reshape(B, 3, S, S)).to(device)
    ann = torch.from_numpy(np.fromfile(os.path.join(d, "annotations.f32"), dtype=np.float32).reshape(B, -1, 5)).to(device)
    torch.backends.cudnn.allow_tf32 = True
    for precision in precisions:
        amp = precision == "bf16"
        # torchvision
        if depth == 50:
            torch.manual_seed(0)
            tv = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=80,
                                                                     min_size=S, max_size=S).to(device).train()
            opt = optimizer_for(tv.parameters(), kind)
            imgs = list(images)
            targets = [{"boxes": a[:, :4], "labels": a[:, 4].long()} for a in ann]

            def tv_step():
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
                    losses = tv(imgs, targets)
                sum(losses.values()).backward()
                opt.step()

            seconds, peak = timed_steps(tv_step, device, warmup, steps)
            print(json.dumps(row("torchvision retinanet_resnet50_fpn", precision, B, steps, seconds, peak)), flush=True)
            del tv, opt
        # the pytorch-retinanet-layout reference with its per-image focal loss
        torch.manual_seed(0)
        ref = RetinaNetRef(depth, 80).to(device).train()
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        anchors = retinanet_anchors(S, S).to(device)
        losses_ref.STD = losses_ref.STD.to(device)
        opt = optimizer_for(ref.parameters(), kind)

        def ref_step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
                _, _, reg, cls = ref(images)
            c, r = focal_retinanet(cls.float(), reg.float(), anchors, ann)
            (c + r).backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.1)
            opt.step()

        prev = torch.get_default_dtype()
        if device == "cuda":
            torch.set_default_device("cuda")  # the reference loss builds tensors without a device
        try:
            seconds, peak = timed_steps(ref_step, device, max(2, warmup // 2), max(3, steps // 3))
        finally:
            if device == "cuda":
                torch.set_default_device("cpu")
        torch.set_default_dtype(prev)
        print(json.dumps(row("reference RetinaNet (pytorch-retinanet layout, per-image focal loss)", precision, B, max(3, steps // 3), seconds, peak)), flush=True)
        del ref, opt
    # FLOPs of one training step of the architecture, and the matrix-product ceiling
    out = {}
    try:
        from torch.utils.flop_counter import FlopCounterMode  # PyTorch ≥ 2.1
        torch.manual_seed(0)
        ref = RetinaNetRef(depth, 80).to(device).train()
        counter = FlopCounterMode(display=False)
        with counter:
            _, _, reg, cls = ref(images)
            (reg.float().square().mean() + cls.float().square().mean()).backward()
        out["flopsPerStep"] = counter.get_total_flops()
    except ImportError:
        pass
    if device == "cuda":
        n = 8192
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            a @ b
        torch.cuda.synchronize()
        out["matmulTflops"] = 2 * n**3 * 20 / (time.perf_counter() - t0) / 1e12
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
