"""Loss references, written from the formulas of the reference projects, looping over images and bins
as they do:
  focal IN OUT            pytorch-retinanet FocalLoss on sigmoid(logits) (its calc_iou, thresholds 0.4/0.5,
                          clamp 1e-4, smooth-L1 β 1/9 on targets / [.1,.1,.2,.2]); grads of cls + reg
  focal_logits IN OUT NORMALIZE REG   same assignment; torchvision.ops.sigmoid_focal_loss per element;
                          REG l1 | smoothL1 | giou; normalised per image (torchvision) or per batch
  ghm IN OUT KIND BINS MOMENTUM MU    the GHM authors' GHMC / GHMR, successive calls pred0, pred1, …
  sigmoid_focal IN OUT    torchvision.ops.sigmoid_focal_loss(logits, targets), reduction none, and grad
IN holds logits [B,N,C], regressions [B,N,4], anchors [N,4], annotations [B,M,5] (label −1 pads).
"""
import sys

import torch
import torch.nn.functional as F
import torchvision

from bundle import read_bundle, write_bundle

STD = torch.tensor([[0.1, 0.1, 0.2, 0.2]])


def calc_iou(a, b):
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = torch.min(a[:, 2:3], b[:, 2]) - torch.max(a[:, 0:1], b[:, 0])
    ih = torch.min(a[:, 3:4], b[:, 3]) - torch.max(a[:, 1:2], b[:, 1])
    iw, ih = iw.clamp(min=0), ih.clamp(min=0)
    ua = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])).unsqueeze(1) + area - iw * ih
    return iw * ih / ua.clamp(min=1e-8)


def assign(anchors, ann, negative_iou=0.4, positive_iou=0.5, low_quality=False, min_pos_iou=0.0, ignore_iof=0.5):
    """→ labels per anchor: class ≥ 0, −1 negative, −2 ignored; assigned boxes. pytorch-retinanet's rule
    (IoU < 0.4 negative, ≥ 0.5 positive, between ignored) on the rows with label ≥ 0; with low_quality
    mmdetection's MaxIoUAssigner low-quality matches (every anchor tying a GT's best IoU ≥ min_pos_iou goes
    to that GT, later GTs winning: gt_max_assign_all). Rows with label ≤ −2 are ignore regions (onestage's
    crowd rows, mmdetection's gt_bboxes_ignore): anchors covered above ignore_iof of their area are ignored."""
    n = anchors.shape[0]
    real = ann[ann[:, 4] >= 0]
    labels = torch.full((n,), -1, dtype=torch.long, device=anchors.device)
    boxes = anchors.clone()
    if real.shape[0] > 0:
        iou = calc_iou(anchors, real[:, :4])
        mx, arg = iou.max(dim=1)
        labels[mx >= negative_iou] = -2
        gt_of = torch.where(mx >= positive_iou, arg, torch.full_like(arg, -1))
        if low_quality:
            best = iou.max(dim=0).values
            for i in range(real.shape[0]):
                if best[i] >= min_pos_iou:
                    gt_of[iou[:, i] == best[i]] = i
        pos = gt_of >= 0
        labels[pos] = real[gt_of[pos], 4].long()
        boxes[pos] = real[gt_of[pos], :4]
    regions = ann[ann[:, 4] <= -2]
    if ignore_iof > 0 and regions.shape[0] > 0:
        iw = (torch.min(anchors[:, 2:3], regions[:, 2]) - torch.max(anchors[:, 0:1], regions[:, 0])).clamp(min=0)
        ih = (torch.min(anchors[:, 3:4], regions[:, 3]) - torch.max(anchors[:, 1:2], regions[:, 1])).clamp(min=0)
        area = ((anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])).clamp(min=1e-8)
        covered = (iw * ih / area[:, None] > ignore_iof).any(dim=1)
        labels[covered] = -2
        boxes[covered] = anchors[covered]
    return labels, boxes


def encode(anchors, gt, std=STD):
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    gw, gh = gw.clamp(min=1), gh.clamp(min=1)
    t = torch.stack(((gx - ax) / aw, (gy - ay) / ah, torch.log(gw / aw), torch.log(gh / ah))).t()
    return t / torch.as_tensor(std, dtype=t.dtype, device=t.device).reshape(1, 4)


def decode(anchors, d):
    d = d * STD
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    x, y = ax + d[:, 0] * aw, ay + d[:, 1] * ah
    w, h = torch.exp(d[:, 2]) * aw, torch.exp(d[:, 3]) * ah
    return torch.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], 1)


def giou(a, b, eps=1e-6):
    a1 = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    a2 = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)
    ov = wh[:, 0] * wh[:, 1]
    union = torch.max(a1 + a2 - ov, torch.tensor(eps))
    ewh = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0)
    enc = torch.max(ewh[:, 0] * ewh[:, 1], torch.tensor(eps))
    return ov / union - (enc - union) / enc


def focal_retinanet(logits, regressions, anchors, annotations, std=STD):
    """pytorch-retinanet's FocalLoss.forward, image by image (targets ÷ std); crowd rows (label ≤ −2) are
    ignore regions as onestage's collater marks them (pytorch-retinanet itself has none)."""
    cls_losses, reg_losses = [], []
    for j in range(logits.shape[0]):
        labels, boxes = assign(anchors, annotations[j][annotations[j][:, 4] != -1])
        c, r = retinanet_terms(logits[j], regressions[j], anchors, labels, boxes, std)
        cls_losses.append(c)
        reg_losses.append(r)
    return torch.stack(cls_losses).mean(), torch.stack(reg_losses).mean()


def retinanet_terms(logits, regressions, anchors, labels, boxes, std=STD, alpha=0.25, gamma=2.0):
    """pytorch-retinanet's per-image terms on an assignment (labels: class ≥ 0, −1 negative, −2 ignored):
    σ clamped to [1e-4, 1 − 1e-4], focal sum ÷ max(1, num_pos); smooth L1 (β 1/9) averaged over 4·num_pos
    (0 without positives)."""
    c = torch.clamp(torch.sigmoid(logits), 1e-4, 1.0 - 1e-4)
    targets = torch.ones_like(c) * -1
    targets[labels == -1, :] = 0
    pos = labels >= 0
    npos = pos.sum()
    targets[pos, :] = 0
    targets[pos, labels[pos]] = 1
    af = torch.where(torch.eq(targets, 1.), torch.ones_like(c) * alpha, 1. - torch.ones_like(c) * alpha)
    fw = af * torch.pow(torch.where(torch.eq(targets, 1.), 1. - c, c), gamma)
    bce = -(targets * torch.log(c) + (1.0 - targets) * torch.log(1.0 - c))
    loss = torch.where(torch.ne(targets, -1.0), fw * bce, torch.zeros_like(c))
    cls = loss.sum() / torch.clamp(npos.float(), min=1.0)
    if npos == 0:
        return cls, torch.tensor(0.0, device=c.device)
    diff = torch.abs(encode(anchors[pos], boxes[pos], std) - regressions[pos, :])
    rl = torch.where(torch.le(diff, 1.0 / 9.0), 0.5 * 9.0 * torch.pow(diff, 2), diff - 0.5 / 9.0)
    return cls, rl.mean()


def focal_logits(logits, regressions, anchors, annotations, normalize, reg_kind, beta=1.0 / 9.0):
    cls_sum, reg_sum, npos_all = [], [], []
    for j in range(logits.shape[0]):
        labels, boxes = assign(anchors, annotations[j][annotations[j][:, 4] != -1])
        valid = labels != -2
        pos = labels >= 0
        t = torch.zeros_like(logits[j])
        t[pos, labels[pos]] = 1
        el = torchvision.ops.sigmoid_focal_loss(logits[j], t, alpha=0.25, gamma=2.0, reduction="none")
        cls_sum.append(el[valid].sum())
        if reg_kind == "giou":
            rl = (1 - giou(decode(anchors[pos], regressions[j][pos]), boxes[pos])).sum()
        else:
            d = torch.abs(encode(anchors[pos], boxes[pos]) - regressions[j][pos])
            rl = (d if reg_kind == "l1" else torch.where(d <= beta, 0.5 / beta * d ** 2, d - 0.5 * beta)).sum()
        reg_sum.append(rl)
        npos_all.append(float(pos.sum()))
    if normalize == "image":
        return (torch.stack([c / max(1.0, n) for c, n in zip(cls_sum, npos_all)]).mean(),
                torch.stack([r / max(1.0, n) for r, n in zip(reg_sum, npos_all)]).mean())
    tot = max(1.0, sum(npos_all))
    return torch.stack(cls_sum).sum() / tot, torch.stack(reg_sum).sum() / tot


class GHMC:
    def __init__(self, bins, momentum):
        self.bins, self.momentum = bins, momentum
        self.edges = [float(x) / bins for x in range(bins + 1)]
        self.edges[-1] += 1e-6
        self.acc_sum = [0.0] * bins

    def __call__(self, pred, target, label_weight):
        weights = torch.zeros_like(pred)
        g = torch.abs(pred.sigmoid().detach() - target)
        valid = label_weight > 0
        tot = max(valid.float().sum().item(), 1.0)
        n = 0
        for i in range(self.bins):
            inds = (g >= self.edges[i]) & (g < self.edges[i + 1]) & valid
            num = inds.sum().item()
            if num > 0:
                if self.momentum > 0:
                    self.acc_sum[i] = self.momentum * self.acc_sum[i] + (1 - self.momentum) * num
                    weights[inds] = tot / self.acc_sum[i]
                else:
                    weights[inds] = tot / num
                n += 1
        if n > 0:
            weights = weights / n
        return F.binary_cross_entropy_with_logits(pred, target, weights, reduction="sum") / tot


class GHMR:
    def __init__(self, bins, momentum, mu):
        self.bins, self.momentum, self.mu = bins, momentum, mu
        self.edges = [float(x) / bins for x in range(bins + 1)]
        self.edges[-1] = 1e3
        self.acc_sum = [0.0] * bins

    def __call__(self, pred, target, label_weight):
        mu = self.mu
        diff = pred - target
        loss = torch.sqrt(diff * diff + mu * mu) - mu
        g = torch.abs(diff / torch.sqrt(mu * mu + diff * diff)).detach()
        weights = torch.zeros_like(g)
        valid = label_weight > 0
        tot = max(label_weight.float().sum().item(), 1.0)
        n = 0
        for i in range(self.bins):
            inds = (g >= self.edges[i]) & (g < self.edges[i + 1]) & valid
            num = inds.sum().item()
            if num > 0:
                n += 1
                if self.momentum > 0:
                    self.acc_sum[i] = self.momentum * self.acc_sum[i] + (1 - self.momentum) * num
                    weights[inds] = tot / self.acc_sum[i]
                else:
                    weights[inds] = tot / num
        if n > 0:
            weights /= n
        return (loss * weights).sum() / tot


def main():
    cmd, in_dir, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    t, _ = read_bundle(in_dir)
    out = {}
    if cmd in ("focal", "focal_logits"):
        logits = t["logits"].clone().requires_grad_(True)
        reg = t["regressions"].clone().requires_grad_(True)
        if cmd == "focal":
            c, r = focal_retinanet(logits, reg, t["anchors"], t["annotations"])
        else:
            c, r = focal_logits(logits, reg, t["anchors"], t["annotations"], sys.argv[4], sys.argv[5])
        (c + r).backward()
        # without any positive anchor pytorch-retinanet's regression loss is a constant: no gradient
        grad_reg = reg.grad if reg.grad is not None else torch.zeros_like(reg)
        out = {"cls": c.detach(), "reg": r.detach(), "grad_logits": logits.grad, "grad_regressions": grad_reg}
    elif cmd == "ghm":
        kind, bins, momentum, mu = sys.argv[4], int(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])
        loss_fn = GHMC(bins, momentum) if kind == "ghmc" else GHMR(bins, momentum, mu)
        k = 0
        while "pred%d" % k in t:
            pred = t["pred%d" % k].clone().requires_grad_(True)
            loss = loss_fn(pred, t["target%d" % k], t["label_weight%d" % k])
            loss.backward()
            out["loss%d" % k], out["grad_pred%d" % k] = loss.detach(), pred.grad
            k += 1
        out["acc_sum_after"] = torch.tensor(loss_fn.acc_sum, dtype=torch.float64)
    elif cmd == "sigmoid_focal":
        x = t["logits"].clone().requires_grad_(True)
        loss = torchvision.ops.sigmoid_focal_loss(x, t["targets"], alpha=0.25, gamma=2.0, reduction="none")
        loss.sum().backward()
        out = {"loss": loss.detach(), "grad_logits": x.grad}
    write_bundle(out_dir, out)


if __name__ == "__main__":
    main()
