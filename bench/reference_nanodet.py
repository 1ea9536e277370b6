"""Forward+backward timing of the NanoDet-Plus reference loss on the batch bench/nanodet.ts makes:
the per-image loop of NanoDet-Plus' head (target_assign_single_img per image, the DSL assigner's
per-GT dynamic-k loop, host synchronisations as in its code), assignment by the auxiliary head,
main + auxiliary losses.  usage: reference_nanodet.py IN_DIR DEVICE WARMUP ITERS"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "test", "reference"))
from timing import timed  # noqa: E402 (bench/timing.py, beside this file)
from bundle import read_bundle  # noqa: E402
from nanodet_ref import assign_batch, distance2bbox, head_loss, integral  # noqa: E402


def main():
    in_dir, device, warmup, iters = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    t, meta = read_bundle(in_dir)
    if device == "cuda":
        torch.set_default_device("cuda")
    t = {k: v.to(device) for k, v in t.items()}
    C, R = int(meta["num_classes"]), 7
    preds = t["preds"].clone().requires_grad_(True)
    aux = t["aux_preds"].clone().requires_grad_(True)
    priors, ann = t["priors"], t["annotations"]

    def step():
        with torch.no_grad():
            dec = distance2bbox(priors[None, :, :2], integral(aux[..., C:], R) * priors[None, :, 2, None])
            gi, _, ious = assign_batch(aux[..., :C], priors, dec, ann)
        main = head_loss(preds, priors, ann, gi, ious, C, R)
        side = head_loss(aux, priors, ann, gi, ious, C, R)
        (sum(main) + sum(side)).backward()

    print(json.dumps({"loss": "NanoDet-Plus (per-image reference loop)", "ms": timed(step, device, warmup, iters)}), flush=True)


if __name__ == "__main__":
    main()
