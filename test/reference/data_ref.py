"""Data references:
  decode OUT_DIR FILE...            PIL decode to RGB, /255, ImageNet-normalised (float64 → float32), each [3, H, W]
  resize FILE W H OUT_DIR           PIL BILINEAR resize to W×H, uint8 [H, W, 3]
  jpeg CASES_JSON OUT_DIR           per case {file, width, height, flip, extract}: Pillow's draft for twice
                                    the size (DCT scaling), convert('RGB'), resize(BILINEAR, box), mirror,
                                    crop — uint8 [H, W, 3] each (width 0: no resize)
  views IN_DIR OUT_DIR              the zoom-and-paste second view by its definition, pixel by pixel:
                                    IN holds images [B,C,H,W], annotations [B,M,5], factors [B]
"""
import json
import math
import sys

import numpy as np
import torch
from PIL import Image

from bundle import read_bundle, write_bundle

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def bilinear(img, x, y):
    """img [C,H,W] float64, sample at continuous pixel coordinates (x, y) with centres at i + 0.5, edges clamped."""
    C, H, W = img.shape
    x, y = x - 0.5, y - 0.5
    x0, y0 = math.floor(x), math.floor(y)
    fx, fy = x - x0, y - y0
    def px(i, j):
        return img[:, min(max(j, 0), H - 1), min(max(i, 0), W - 1)]
    return (px(x0, y0) * (1 - fx) * (1 - fy) + px(x0 + 1, y0) * fx * (1 - fy) +
            px(x0, y0 + 1) * (1 - fx) * fy + px(x0 + 1, y0 + 1) * fx * fy)


def main():
    cmd = sys.argv[1]
    if cmd == "decode":
        out = {}
        for k, f in enumerate(sys.argv[3:]):
            a = np.asarray(Image.open(f).convert("RGB")).astype(np.float64) / 255.0
            out["image%d" % k] = torch.from_numpy(((a - MEAN) / STD).astype(np.float32).transpose(2, 0, 1).copy())
        write_bundle(sys.argv[2], out)
    elif cmd == "resize":
        f, w, h = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        a = np.asarray(Image.open(f).convert("RGB").resize((w, h), Image.BILINEAR))
        write_bundle(sys.argv[5], {"image": torch.from_numpy(a.copy())})
    elif cmd == "jpeg":
        with open(sys.argv[2]) as f:
            cases = json.load(f)
        out = {}
        for k, c in enumerate(cases):
            im = Image.open(c["file"])
            if c["width"]:
                w, h = c["width"], c["height"]
                _, box = im.draft("RGB", (2 * w, 2 * h))
                im = im.convert("RGB").resize((w, h), Image.BILINEAR, box=box)
            else:
                im = im.convert("RGB")
            if c["flip"]:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            if c["extract"]:
                l, t, ew, eh = c["extract"]
                im = im.crop((l, t, l + ew, t + eh))
            out["image%d" % k] = torch.from_numpy(np.asarray(im).copy())
        write_bundle(sys.argv[3], out)
    elif cmd == "views":
        t, _ = read_bundle(sys.argv[2])
        images = t["images"].double().numpy()
        ann = t["annotations"].double().numpy()
        factors = t["factors"].double().numpy()
        views = images.copy()
        B, C, H, W = images.shape
        for b in range(B):
            boxes = [r for r in ann[b] if r[4] >= 0]
            boxes.sort(key=lambda r: -(r[2] - r[0]) * (r[3] - r[1]))  # largest first; stable
            for x1, y1, x2, y2, _ in boxes:
                cx, cy, f = (x1 + x2) / 2, (y1 + y2) / 2, factors[b]
                for yy in range(H):
                    if not (y1 <= yy + 0.5 < y2):
                        continue
                    for xx in range(W):
                        if x1 <= xx + 0.5 < x2:
                            sx = cx + (xx + 0.5 - cx) / f
                            sy = cy + (yy + 0.5 - cy) / f
                            views[b, :, yy, xx] = bilinear(images[b], sx, sy)
        write_bundle(sys.argv[3], {"views": torch.from_numpy(views.astype(np.float32))})


if __name__ == "__main__":
    main()
