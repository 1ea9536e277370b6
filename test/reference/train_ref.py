"""Reference training loops: the same model, batches and initial weights as an onestage run, trained with
the reference projects' arithmetic, step by step.

  train_ref.py RUN_DIR [--device cpu|cuda] [--steps N] [--snapshot K] [--perturb SEED] [--out NAME]

RUN_DIR (written by bench/training_parity.ts):
  config.json          {"model": {architecture 'retinanet': depth, numClasses, featureSize, anchorSizes;
                        'nanodet-plus': also headChannels, stackedConvs, kernelSize, regMax, strides,
                        auxChannels, auxStackedConvs, auxGroups}, "loss": onestage's RetinaNetLossOptions
                        or NanoDetPlusLossOptions, "optimizer": {type, lr, weightDecay, momentum,
                        nesterov, beta1, beta2, eps, clipGradNorm}}
  init.safetensors     the initial weights (pytorch-retinanet / onestage key names)
  batches.jsonl        per step {step, epoch, lr, images: {offset, shape}, annotations: {offset, shape}}
  batches.bin          the float32 little-endian data those offsets (in bytes) point into
Writes RUN_DIR/reference/ (or RUN_DIR/NAME/) steps.jsonl ({step, cls, reg, total, gradNorm} per step), final.safetensors
(parameters and BatchNorm buffers), and with --snapshot K also snapshot.safetensors after K steps.

How each loss is composed, from the reference projects' own code:
  classification 'focal' (+ regression 'smoothL1'): pytorch-retinanet's FocalLoss — assignment by max IoU
    (< 0.4 negative, >= 0.5 positive), probabilities clamped to [1e-4, 1 - 1e-4], per-image sum / num_pos,
    smooth L1 (beta 1/9) on targets / std averaged over 4 num_pos, means over the images. Crowd rows
    (label <= -2, the shapes data has them) are ignore regions: anchors covered above ignoreIof of their
    area are ignored (mmdetection's ignore_iof_thr; pytorch-retinanet has no crowd boxes).
  classification 'ghmc' / regression 'ghmr': mmdetection's RetinaNet head (AnchorHead.loss) with the GHM
    authors' GHMC / GHMR modules: label weights 1 for positives and negatives, 0 for ignored anchors;
    one-hot targets; box targets DeltaXYWHBBoxCoder(std) with weights 1 on the 4 deltas of positives;
    with ghmPerLevel the head calls its one loss module once per pyramid level (level order, the same
    acc_sum) and sums; otherwise once over every anchor of the batch. The assigner is mmdetection's
    MaxIoUAssigner when lowQualityMatches is set (min_pos_iou, every anchor tying a GT's best IoU).
  NanoDet-Plus: NanoDetPlusHead + the AGM (aux_fpn, SimpleConvHead on both pyramids, detached from
    detachEpoch on), Dynamic Soft Label assignment by the auxiliary predictions, QFL + GIoU + DFL of both
    heads with NanoDet-Plus' normalisers (test/reference/nanodet_ref.py).
  The optimizer is torch.optim's (SGD / AdamW), gradients clipped with clip_grad_norm_.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

import torch.nn as nn
import torch.nn.functional as F

from losses_ref import GHMC, GHMR, assign, encode, retinanet_terms
from nanodet_ref import assign_batch, distance2bbox, head_loss, integral, priors_for
from retinanet_ref import Pyramid, RetinaNetRef, add_resnet, pyramid_anchors, resnet_features
import safetensors_io

LEAKY = 0.1  # NanoDet's LeakyReLU slope


class DepthwiseConvModule(nn.Module):
    """NanoDet's DepthwiseConvModule: depthwise k x k conv, BN, LeakyReLU, pointwise 1 x 1 conv, BN, LeakyReLU."""

    def __init__(self, cin, cout, k, stride=1):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, k, stride, k // 2, groups=cin, bias=False)
        self.dwnorm = nn.BatchNorm2d(cin)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.pwnorm = nn.BatchNorm2d(cout)

    def forward(self, x):
        x = F.leaky_relu(self.dwnorm(self.depthwise(x)), LEAKY)
        return F.leaky_relu(self.pwnorm(self.pointwise(x)), LEAKY)


class ConvNormAct(nn.Module):
    """NanoDet's ConvModule with GroupNorm and LeakyReLU (the auxiliary head's)."""

    def __init__(self, cin, cout, groups):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(groups, cout)

    def forward(self, x):
        return F.leaky_relu(self.gn(self.conv(x)), LEAKY)


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.scale


def flatten_levels(outs):
    """[B, K, H, W] per level -> [B, sum H W, K]."""
    return torch.cat([o.flatten(2) for o in outs], 2).permute(0, 2, 1)


class NanoDetPlusHeadRef(nn.Module):
    """NanoDet-Plus' NanoDetPlusHead (share_cls_reg: one 1 x 1 conv per level gives classes and distributions)."""

    def __init__(self, num_classes, cin, feat, stacked, k, reg_max, levels):
        super().__init__()
        self.cls_convs = nn.ModuleList(
            [nn.ModuleList([DepthwiseConvModule(cin if i == 0 else feat, feat, k) for i in range(stacked)]) for _ in range(levels)])
        self.gfl_cls = nn.ModuleList([nn.Conv2d(feat if stacked else cin, num_classes + 4 * (reg_max + 1), 1) for _ in range(levels)])

    def forward(self, feats):
        outs = []
        for x, convs, out in zip(feats, self.cls_convs, self.gfl_cls):
            for c in convs:
                x = c(x)
            outs.append(out(x))
        return flatten_levels(outs)


class SimpleConvHeadRef(nn.Module):
    """NanoDet-Plus' SimpleConvHead, the AGM's auxiliary head (GroupNorm convs, a Scale per level on the distributions)."""

    def __init__(self, num_classes, cin, feat, stacked, groups, reg_max, levels):
        super().__init__()
        self.cls_convs = nn.ModuleList([ConvNormAct(cin if i == 0 else feat, feat, groups) for i in range(stacked)])
        self.reg_convs = nn.ModuleList([ConvNormAct(cin if i == 0 else feat, feat, groups) for i in range(stacked)])
        last = feat if stacked else cin
        self.gfl_cls = nn.Conv2d(last, num_classes, 3, padding=1)
        self.gfl_reg = nn.Conv2d(last, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList([Scale() for _ in range(levels)])

    def forward(self, feats):
        outs = []
        for x, scale in zip(feats, self.scales):
            c, r = x, x
            for m in self.cls_convs:
                c = m(c)
            for m in self.reg_convs:
                r = m(r)
            outs.append(torch.cat([self.gfl_cls(c), scale(self.gfl_reg(r))], 1))
        return flatten_levels(outs)


class NanoDetPlusRef(nn.Module):
    """onestage's NanoDet-Plus layout: ResNet, FPN P3..P6, NanoDetPlusHead; for training the AGM: aux_fpn and
    aux_head on the concatenation of both pyramids (inputs detached from detach_epoch on, as NanoDet-Plus)."""

    def __init__(self, m):
        super().__init__()
        chans = add_resnet(self, m["depth"])
        levels = len(m["strides"])
        fs = m["featureSize"]
        self.fpn = Pyramid(chans[1], chans[2], chans[3], fs, levels)
        self.head = NanoDetPlusHeadRef(m["numClasses"], fs, m["headChannels"], m["stackedConvs"], m["kernelSize"], m["regMax"], levels)
        self.aux_fpn = Pyramid(chans[1], chans[2], chans[3], fs, levels)
        self.aux_head = SimpleConvHeadRef(m["numClasses"], 2 * fs, m["auxChannels"], m["auxStackedConvs"], m["auxGroups"], m["regMax"], levels)

    def forward(self, x, detach):
        c3, c4, c5 = resnet_features(self, x)
        ps = self.fpn(c3, c4, c5)
        preds = self.head(ps)
        if detach:
            c3, c4, c5 = c3.detach(), c4.detach(), c5.detach()
        aux_ps = self.aux_fpn(c3, c4, c5)
        dual = [torch.cat([p.detach() if detach else p, a], 1) for p, a in zip(ps, aux_ps)]
        return preds, self.aux_head(dual)


def nanodet_plus_step(model, m, loss_cfg, images, ann, epoch):
    """One NanoDet-Plus training loss: the AGM's predictions assign (DSL) for main and auxiliary heads
    (assignBy 'aux-until-detach': the main head's own from detachEpoch on); → (QFL sum, box sum)."""
    detach = epoch >= loss_cfg.get("detachEpoch", 10)
    preds, aux = model(images, detach)
    C, R = m["numClasses"], m["regMax"]
    priors = priors_for(images.shape[2], images.shape[3], m["strides"]).to(images.device)
    by = preds if (loss_cfg.get("assignBy", "aux") == "aux-until-detach" and detach) else aux
    with torch.no_grad():
        b = by.detach()
        dec = distance2bbox(priors[None, :, :2], integral(b[..., C:], R) * priors[None, :, 2, None])
        gi, _, ious = assign_batch(b[..., :C], priors, dec, ann)
    q, g, d = head_loss(preds, priors, ann, gi, ious, C, R)
    aq, ag, ad = head_loss(aux, priors, ann, gi, ious, C, R)
    return q + aq, g + d + ag + ad


class ReferenceLoss:
    def __init__(self, o):
        self.o = o
        self.focal = o.get("focal", {})
        self.std = self.focal.get("boxCoder", {}).get("std", [0.1, 0.1, 0.2, 0.2])
        gc, gr = o.get("ghmc", {}), o.get("ghmr", {})
        self.ghmc = GHMC(gc.get("bins", 10), gc.get("momentum", 0.75))
        self.ghmc_weight = gc.get("lossWeight", 1.0)
        self.ghmr = GHMR(gr.get("bins", 10), gr.get("momentum", 0.7), gr.get("mu", 0.02))
        self.ghmr_weight = gr.get("lossWeight", 1.0)

    def __call__(self, cls, reg, anchors, annotations, level_sizes):
        o = self.o
        classification, regression = o.get("classification", "focal"), o.get("regression", "smoothL1")
        if regression not in ("smoothL1", "ghmr"):
            raise SystemExit("train_ref.py: regression %r has no reference here" % regression)
        a = self.focal.get("assigner", {})
        B = cls.shape[0]
        per = [assign(anchors, annotations[b][annotations[b][:, 4] != -1], a.get("negativeIou", 0.4), a.get("positiveIou", 0.5),
                      a.get("lowQualityMatches", False), a.get("minPositiveIou", 0.0), a.get("ignoreIof", 0.5)) for b in range(B)]
        labels = torch.stack([p[0] for p in per])
        boxes = torch.stack([p[1] for p in per])
        # pytorch-retinanet's FocalLoss terms (means over the images)
        terms = [retinanet_terms(cls[b], reg[b], anchors, labels[b], boxes[b], self.std) for b in range(B)] \
            if classification == "focal" or regression == "smoothL1" else []
        if classification == "focal":
            cls_loss = torch.stack([t[0] for t in terms]).mean()
        else:
            target = torch.zeros_like(cls)
            pos = labels >= 0
            target[pos, labels[pos]] = 1
            weight = (labels != -2).float().unsqueeze(-1).expand_as(cls)
            cls_loss = self.per_level(self.ghmc, cls, target, weight, level_sizes) * self.ghmc_weight
        if regression == "smoothL1":
            reg_loss = torch.stack([t[1] for t in terms]).mean()
        else:
            target = torch.stack([encode(anchors, boxes[b], self.std) for b in range(B)])
            weight = (labels >= 0).float().unsqueeze(-1).expand_as(reg)
            reg_loss = self.per_level(self.ghmr, reg, target.detach(), weight, level_sizes) * self.ghmr_weight
        return cls_loss * o.get("clsWeight", 1.0), reg_loss * o.get("regWeight", 1.0)

    def per_level(self, module, pred, target, weight, level_sizes):
        """mmdetection's AnchorHead.loss: loss_single per level over the batch's anchors of that level
        (one module, so one acc_sum, updated level after level), the levels' losses summed."""
        D = pred.shape[-1]
        if not self.o.get("ghmPerLevel", False):
            return module(pred.reshape(-1, D), target.reshape(-1, D), weight.reshape(-1, D))
        total, start = 0, 0
        for n in level_sizes:
            sl = slice(start, start + n)
            total = total + module(pred[:, sl].reshape(-1, D), target[:, sl].reshape(-1, D), weight[:, sl].reshape(-1, D))
            start += n
        return total


def read_steps(run_dir):
    with open(os.path.join(run_dir, "batches.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_tensor(blob, entry, device):
    count = int(np.prod(entry["shape"]))
    arr = np.frombuffer(blob, dtype="<f4", count=count, offset=entry["offset"])
    return torch.from_numpy(arr.copy()).reshape(entry["shape"]).to(device)


def state_for_saving(model):
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--snapshot", type=int, default=0)
    ap.add_argument("--perturb", type=int, default=0,
                    help="a control: move every initial weight by one float32 rounding step (random direction, this seed), "
                         "to measure how far rounding-level differences carry through the training")
    ap.add_argument("--out", default="reference", help="folder under RUN_DIR for the records")
    args = ap.parse_args()
    run = args.run_dir
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = json.load(open(os.path.join(run, "config.json")))
    m = cfg["model"]
    nanodet = m.get("architecture", "retinanet") == "nanodet-plus"
    model = NanoDetPlusRef(m) if nanodet else RetinaNetRef(m["depth"], m["numClasses"], width=m["featureSize"])
    weights, _, _ = safetensors_io.read(os.path.join(run, "init.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SystemExit("train_ref.py: init.safetensors does not fit the model: missing %s unexpected %s" % (missing[:5], unexpected[:5]))
    if args.perturb:
        g = torch.Generator().manual_seed(args.perturb)
        with torch.no_grad():
            for p in model.parameters():
                step = torch.where(torch.rand(p.shape, generator=g) < 0.5, -1.0, 1.0) * p.abs() * 2.0 ** -24
                p.add_(step)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg["optimizer"]
    if o.get("type", "sgd") == "adamw":
        opt = torch.optim.AdamW(params, lr=o.get("lr", 0.01), betas=(o.get("beta1", 0.9), o.get("beta2", 0.999)), eps=o.get("eps", 1e-8),
                                weight_decay=o.get("weightDecay", 1e-4))
    else:
        opt = torch.optim.SGD(params, lr=o.get("lr", 0.01), momentum=o.get("momentum", 0.9), weight_decay=o.get("weightDecay", 1e-4),
                              nesterov=o.get("nesterov", False))
    clip = o.get("clipGradNorm", 0.1)
    loss_fn = None if nanodet else ReferenceLoss(cfg["loss"])
    steps = read_steps(run)
    if args.steps > 0:
        steps = steps[:args.steps]
    out_dir = os.path.join(run, args.out)
    os.makedirs(out_dir, exist_ok=True)
    blob = np.memmap(os.path.join(run, "batches.bin"), dtype=np.uint8, mode="r")
    anchors_by_shape = {}
    with open(os.path.join(out_dir, "steps.jsonl.tmp"), "w") as log:
        for k, s in enumerate(steps):
            images = load_tensor(blob, s["images"], device)
            ann = load_tensor(blob, s["annotations"], device)
            for g in opt.param_groups:
                g["lr"] = s["lr"]
            opt.zero_grad(set_to_none=True)
            if nanodet:
                cls_loss, reg_loss = nanodet_plus_step(model, m, cfg["loss"], images, ann, s["epoch"])
            else:
                H, W = images.shape[2], images.shape[3]
                if (H, W) not in anchors_by_shape:
                    anchors_by_shape[(H, W)] = pyramid_anchors(H, W, m["anchorSizes"])
                anchors, level_sizes = anchors_by_shape[(H, W)]
                _, _, reg, cls = model(images)
                cls_loss, reg_loss = loss_fn(cls.float(), reg.float(), anchors.to(device), ann, level_sizes)
            total = cls_loss + reg_loss
            total.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
            c, r, n = float(cls_loss), float(reg_loss), float(norm)
            if math.isfinite(c + r) and math.isfinite(n):
                opt.step()
            log.write(json.dumps({"step": s["step"], "cls": c, "reg": r, "total": c + r, "gradNorm": n}) + "\n")
            if args.snapshot and k + 1 == args.snapshot:
                safetensors_io.write(state_for_saving(model), os.path.join(out_dir, "snapshot.safetensors"))
            if (k + 1) % 500 == 0:
                print("reference: step %d/%d loss %.4f" % (k + 1, len(steps), c + r), file=sys.stderr, flush=True)
    os.replace(os.path.join(out_dir, "steps.jsonl.tmp"), os.path.join(out_dir, "steps.jsonl"))
    safetensors_io.write(state_for_saving(model), os.path.join(out_dir, "final.safetensors.tmp"))
    os.replace(os.path.join(out_dir, "final.safetensors.tmp"), os.path.join(out_dir, "final.safetensors"))


if __name__ == "__main__":
    main()
