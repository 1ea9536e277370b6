"""Loop reference of the per-object contrastive loss (the definition in native/core/losses/contrastive.h),
written with explicit Python loops over images, boxes, levels and views, RoIAlign from torchvision
(aligned=True, fixed sampling ratio).

usage: contrastive_ref.py IN_DIR OUT_DIR device
IN_DIR: f1_0.., f2_0.. ([B, C, H, W] per level), annotations [B, M, 5];
meta: levels, negatives, pooling, temperature, output_size, sampling_ratio, first_level, grid, height, width.
OUT: loss, grad1_l, grad2_l, and counts.
"""
import math
import sys

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from bundle import read_bundle, write_bundle


def background_box(ann_rows, height, width, grid):
    """The grid cell with the smallest largest intersection-over-cell with any non-padding row."""
    cw, ch = width / grid, height / grid
    best, best_cover = None, None
    for k in range(grid * grid):
        r, c = k // grid, k % grid
        cell = (c * cw, r * ch, (c + 1) * cw, (r + 1) * ch)
        cover = 0.0
        for row in ann_rows:
            if row[4] == -1:
                continue
            iw = max(0.0, min(cell[2], row[2]) - max(cell[0], row[0]))
            ih = max(0.0, min(cell[3], row[3]) - max(cell[1], row[1]))
            cover = max(cover, iw * ih / (cw * ch))
        if best_cover is None or cover < best_cover:
            best, best_cover = cell, cover
    return best


def embed(feature, b, box, stride, m):
    rois = torch.tensor([[float(b), *box]], dtype=feature.dtype, device=feature.device)
    pooled = roi_align(feature, rois, output_size=(m['output_size'], m['output_size']), spatial_scale=1.0 / stride,
                       sampling_ratio=m['sampling_ratio'], aligned=True)[0]
    v = pooled.flatten() if m['pooling'] == 'flatten' else pooled.mean(dim=(1, 2))
    return F.normalize(v, dim=0)


def reference_loss(f1, f2, ann, m):
    """The loss from feature lists of both views and annotation rows (lists); (loss, embeddings, with background)."""
    L = len(f1)
    B = len(ann)
    strides = [2.0 ** (m['first_level'] + l) for l in range(L)]
    boxes = []  # (image, row, box, class)
    for b in range(B):
        for r, row in enumerate(ann[b]):
            if row[4] >= 0:
                boxes.append((b, r, row[:4], int(row[4])))
    if not boxes:
        return sum(x.sum() * 0.0 for x in f1 + f2), 0, 0

    def level_of(box):
        side = math.sqrt(max((box[2] - box[0]) * (box[3] - box[1]), 1e-12))
        return min(max(math.floor(4 + math.log2(side / 224.0)) - m['first_level'], 0), L - 1)
    items = []  # (level, view, box index, embedding)
    for g, (b, r, box, c) in enumerate(boxes):
        levels = range(L) if m['levels'] == 'all' else [level_of(box)]
        for l in levels:
            for v, feats in enumerate((f1, f2)):
                items.append((l, v, g, embed(feats[l], b, box, strides[l], m)))
    backgrounds = {}  # (image, level, view) -> embedding
    for b in range(B):
        cell = background_box(ann[b], m['height'], m['width'], m['grid'])
        for l in range(L):
            for v, feats in enumerate((f1, f2)):
                backgrounds[(b, l, v)] = embed(feats[l], b, cell, strides[l], m)
    tau = m['temperature']
    terms = []
    bg_count = 0
    for (l, v, g, e) in items:
        b, r, _, c = boxes[g]
        positive = next(x[3] for x in items if x[0] == l and x[1] == 1 - v and x[2] == g)
        negatives = []
        for (l2, v2, g2, e2) in items:
            if l2 != l:
                continue
            b2, r2, _, c2 = boxes[g2]
            if m['negatives'] == 'other-class':
                ok = c2 != c
            elif m['negatives'] == 'all-other':
                ok = g2 != g
            else:
                ok = b2 != b and r2 == r
            if ok:
                negatives.append(e2)
        if not negatives:
            bg_count += 1
            negatives = [backgrounds[(b, l, 0)], backgrounds[(b, l, 1)]]
        logits = torch.stack([torch.dot(e, positive)] + [torch.dot(e, n) for n in negatives]) / tau
        terms.append(torch.logsumexp(logits, 0) - logits[0])
    return torch.stack(terms).mean(), len(items), bg_count


def main(in_dir, out_dir, device='cpu'):
    t, m = read_bundle(in_dir)
    L = sum(1 for k in t if k.startswith('f1_'))
    f1 = [t[f'f1_{l}'].to(device).requires_grad_(True) for l in range(L)]
    f2 = [t[f'f2_{l}'].to(device).requires_grad_(True) for l in range(L)]
    loss, emb_count, bg_count = reference_loss(f1, f2, t['annotations'].tolist(), m)
    loss.backward()
    out = {'loss': loss.detach().reshape(1).cpu(), 'counts': torch.tensor([emb_count, bg_count], dtype=torch.float32)}
    for l in range(L):
        # a level no term reached has no gradient: zeros (the native loss gives exact zeros there)
        out[f'grad1_{l}'] = (f1[l].grad if f1[l].grad is not None else torch.zeros_like(f1[l])).cpu()
        out[f'grad2_{l}'] = (f2[l].grad if f2[l].grad is not None else torch.zeros_like(f2[l])).cpu()
    write_bundle(out_dir, out, {'torch': torch.__version__})


if __name__ == '__main__':
    main(*sys.argv[1:])
