"""Forward+backward timing of the reference loss implementations on the batch bench/losses.ts makes
(same shapes and seed): pytorch-retinanet's per-image FocalLoss loop and the GHM authors' per-bin
GHM-C / GHM-R loops (with .item() each bin).  usage: reference_losses.py IN_DIR DEVICE WARMUP ITERS"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "test", "reference"))
from timing import timed  # noqa: E402 (bench/timing.py, beside this file)
from bundle import read_bundle  # noqa: E402
from losses_ref import GHMC, GHMR, encode, focal_retinanet  # noqa: E402



def main():
    in_dir, device, warmup, iters = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    t, _ = read_bundle(in_dir)
    t = {k: v.to(device) for k, v in t.items()}
    logits = t["logits"].clone().requires_grad_(True)
    reg = t["regressions"].clone().requires_grad_(True)
    anchors, ann = t["anchors"], t["annotations"]
    torch.set_default_tensor_type(torch.cuda.FloatTensor if device == "cuda" else torch.FloatTensor)
    import losses_ref
    losses_ref.STD = losses_ref.STD.to(device)

    # every call starts with the inputs' gradients cleared (as onestage's side does)
    def clear():
        logits.grad = None
        reg.grad = None

    def focal():
        clear()
        c, r = focal_retinanet(logits, reg, anchors, ann)
        (c + r).backward()

    print(json.dumps({"loss": "Focal (pytorch-retinanet per-image loop)", "ms": timed(focal, device, warmup, iters)}), flush=True)
    labels = t["ghm_labels"].view(-1)
    row_weight = t["ghm_row_weight"].view(-1)
    C = logits.shape[-1]
    ghmc = GHMC(10, 0.75)

    def run_ghmc():
        clear()
        # mmdetection's GHMC receives labels and expands them to one-hot inside the loss
        target = torch.zeros(labels.numel(), C, device=labels.device)
        inds = torch.nonzero((labels >= 0) & (labels < C)).squeeze(1)
        target[inds, labels[inds]] = 1
        weight = row_weight.view(-1, 1).expand(-1, C)
        ghmc(logits.view(-1, C), target, weight).backward()

    print(json.dumps({"loss": "GHM-C (authors' per-bin loop)", "ms": timed(run_ghmc, device, warmup, iters)}), flush=True)
    deltas = t["ghm_deltas"]
    rweight = t["ghm_rweight"]
    ghmr = GHMR(10, 0.7, 0.02)

    def run_ghmr():
        clear()
        ghmr(reg.view(-1, 4), deltas.view(-1, 4), rweight.view(-1, 4)).backward()

    print(json.dumps({"loss": "GHM-R (authors' per-bin loop)", "ms": timed(run_ghmr, device, warmup, iters)}), flush=True)


if __name__ == "__main__":
    main()
