"""A PyTorch RetinaNet written from the RetinaNet description, with pytorch-retinanet's module names
(conv1, bn1, layer1..4, fpn.P5_1 … fpn.P7_2, regressionModel.*, classificationModel.*), its numpy
anchors and its box transform; post-processing as torchvision's RetinaNet (per-level top-k,
batched_nms, detections per image). The parity reference for the onestage model.

usage:
  retinanet_ref.py model DEPTH NUM_CLASSES SEED IN_DIR OUT_DIR   random weights (seed) → OUT_DIR/weights.pt,
        outputs of IN_DIR/images → OUT_DIR (c3..c5, p3..p7, regression, classification logits, anchors, decoded)
  retinanet_ref.py postprocess IN_DIR OUT_DIR SCORE TOPK NMS MAXDET
        IN_DIR: regression [B,N,4], classification [B,N,C] logits, anchors [N,4], limits [B,2], level_sizes [L]
  retinanet_ref.py backbone DEPTH SEED IN_DIR OUT_DIR     torchvision resnetDEPTH (random) → weights.pt, c3..c5
  retinanet_ref.py nms IN_DIR OUT_DIR IOU                torchvision.ops.nms and batched_nms
  retinanet_ref.py anchors H W OUT_DIR                   pytorch-retinanet's numpy anchors
"""
import math
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from bundle import read_bundle, write_bundle


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottle(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


LAYOUT = {18: (Basic, [2, 2, 2, 2]), 34: (Basic, [3, 4, 6, 3]), 50: (Bottle, [3, 4, 6, 3]),
          101: (Bottle, [3, 4, 23, 3]), 152: (Bottle, [3, 8, 36, 3])}


class Subnet(nn.Module):
    def __init__(self, cin, per_anchor, anchors=9, width=256):
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1 = nn.Conv2d(cin, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.conv3 = nn.Conv2d(width, width, 3, padding=1)
        self.conv4 = nn.Conv2d(width, width, 3, padding=1)
        self.output = nn.Conv2d(width, anchors * per_anchor, 3, padding=1)

    def forward(self, x):
        for c in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = F.relu(c(x))
        x = self.output(x).permute(0, 2, 3, 1)
        return x.reshape(x.shape[0], -1, self.per_anchor)


class Pyramid(nn.Module):
    def __init__(self, c3, c4, c5, width=256, levels=5):
        super().__init__()
        self.levels = levels
        self.P5_1 = nn.Conv2d(c5, width, 1)
        self.P5_2 = nn.Conv2d(width, width, 3, padding=1)
        self.P4_1 = nn.Conv2d(c4, width, 1)
        self.P4_2 = nn.Conv2d(width, width, 3, padding=1)
        self.P3_1 = nn.Conv2d(c3, width, 1)
        self.P3_2 = nn.Conv2d(width, width, 3, padding=1)
        if levels >= 4:
            self.P6 = nn.Conv2d(c5, width, 3, stride=2, padding=1)
        if levels >= 5:
            self.P7_2 = nn.Conv2d(width, width, 3, stride=2, padding=1)

    def forward(self, c3, c4, c5):
        l5 = self.P5_1(c5)
        l4 = self.P4_1(c4) + F.interpolate(l5, size=c4.shape[-2:], mode="nearest")
        l3 = self.P3_1(c3) + F.interpolate(l4, size=c3.shape[-2:], mode="nearest")
        out = [self.P3_2(l3), self.P4_2(l4), self.P5_2(l5)]
        if self.levels >= 4:
            out.append(self.P6(c5))
        if self.levels >= 5:
            out.append(self.P7_2(F.relu(out[3])))
        return out


def add_resnet(module, depth):
    """conv1, bn1, layer1..4 as attributes of `module` (torchvision's names); → the channels of C2..C5."""
    block, counts = LAYOUT[depth]
    module.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    module.bn1 = nn.BatchNorm2d(64)
    cin = 64
    chans = []
    for i, (planes, n) in enumerate(zip([64, 128, 256, 512], counts)):
        blocks = []
        for j in range(n):
            blocks.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1))
            cin = planes * block.expansion
        setattr(module, "layer%d" % (i + 1), nn.Sequential(*blocks))
        chans.append(cin)
    return chans


def resnet_features(module, x):
    """C3, C4, C5 of the ResNet attributes added by add_resnet."""
    x = F.max_pool2d(F.relu(module.bn1(module.conv1(x))), 3, 2, 1)
    c3 = module.layer2(module.layer1(x))
    c4 = module.layer3(c3)
    return c3, c4, module.layer4(c4)


class RetinaNetRef(nn.Module):
    def __init__(self, depth, num_classes, width=256):
        super().__init__()
        chans = add_resnet(self, depth)
        self.fpn = Pyramid(chans[1], chans[2], chans[3], width)
        self.regressionModel = Subnet(width, 4, width=width)
        self.classificationModel = Subnet(width, num_classes, width=width)

    def forward(self, x):
        c3, c4, c5 = resnet_features(self, x)
        ps = self.fpn(c3, c4, c5)
        reg = torch.cat([self.regressionModel(p) for p in ps], 1)
        cls = torch.cat([self.classificationModel(p) for p in ps], 1)
        return (c3, c4, c5), ps, reg, cls


def randomise(model, seed):
    """Random weights with O(1) activations (He-normal convs, BN statistics not at identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean") or (t.dim() == 1 and name.endswith("bias")):
                t.copy_((torch.rand(t.shape, generator=g) - 0.5) * 0.2)
            elif t.dim() == 1:  # BN weight
                t.copy_(torch.rand(t.shape, generator=g) * 0.4 + 0.8)
            else:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * math.sqrt(1.0 / fan_in))
        if hasattr(model, "classificationModel"):
            model.classificationModel.output.bias.copy_(torch.rand(model.classificationModel.output.bias.shape, generator=g) * 3.5 - 3.0)
            model.classificationModel.output.weight.mul_(0.05)
            model.regressionModel.output.weight.mul_(0.05)


def retinanet_anchors(h, w, sizes=None):
    """pytorch-retinanet's numpy anchors: float64 arithmetic, float32 at the end; `sizes` per level
    (default 2^(level+2)) as its Anchors(sizes=...)."""
    return pyramid_anchors(h, w, sizes)[0]


def pyramid_anchors(h, w, sizes=None):
    """(anchors [N, 4] float32, anchors per level) of pytorch-retinanet's numpy anchors."""
    levels = [3, 4, 5, 6, 7]
    sizes = sizes or [2 ** (lv + 2) for lv in levels]
    ratios = np.array([0.5, 1, 2])
    scales = np.array([2 ** 0, 2 ** (1.0 / 3.0), 2 ** (2.0 / 3.0)])
    out = []
    for lv, size in zip(levels, sizes):
        stride = 2 ** lv
        base = np.zeros((9, 4))
        base[:, 2:] = size * np.tile(scales, (2, len(ratios))).T
        areas = base[:, 2] * base[:, 3]
        base[:, 2] = np.sqrt(areas / np.repeat(ratios, len(scales)))
        base[:, 3] = base[:, 2] * np.repeat(ratios, len(scales))
        base[:, 0::2] -= np.tile(base[:, 2] * 0.5, (2, 1)).T
        base[:, 1::2] -= np.tile(base[:, 3] * 0.5, (2, 1)).T
        gh, gw = (h + stride - 1) // stride, (w + stride - 1) // stride
        sx, sy = np.meshgrid((np.arange(gw) + 0.5) * stride, (np.arange(gh) + 0.5) * stride)
        shifts = np.vstack((sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel())).T
        out.append((base[None] + shifts[:, None]).reshape(-1, 4))
    return torch.from_numpy(np.concatenate(out).astype(np.float32)), [len(a) for a in out]


def decode(anchors, deltas, std=(0.1, 0.1, 0.2, 0.2)):
    w = anchors[..., 2] - anchors[..., 0]
    h = anchors[..., 3] - anchors[..., 1]
    cx = anchors[..., 0] + 0.5 * w
    cy = anchors[..., 1] + 0.5 * h
    px = cx + deltas[..., 0] * std[0] * w
    py = cy + deltas[..., 1] * std[1] * h
    pw = torch.exp(deltas[..., 2] * std[2]) * w
    ph = torch.exp(deltas[..., 3] * std[3]) * h
    return torch.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], -1)


def postprocess(reg, logits, anchors, limits, level_sizes, score, topk, iou, maxdet):
    """torchvision RetinaNet.postprocess_detections, per image; topk/maxdet 0 = no limit."""
    B, N, C = logits.shape
    results = []
    for b in range(B):
        boxes_all, scores_all, labels_all = [], [], []
        start = 0
        for n in level_sizes:
            s = torch.sigmoid(logits[b, start:start + n]).flatten()
            keep = s > score
            s = s[keep]
            idx = torch.where(keep)[0]
            k = s.numel() if topk <= 0 else min(topk, s.numel())
            s, o = s.topk(k)
            idx = idx[o]
            a = idx // C + start
            boxes = decode(anchors[a], reg[b, a])
            hh, ww = float(limits[b, 0]), float(limits[b, 1])
            boxes = torch.stack([boxes[:, 0].clamp(0, ww), boxes[:, 1].clamp(0, hh),
                                 boxes[:, 2].clamp(0, ww), boxes[:, 3].clamp(0, hh)], 1)
            boxes_all.append(boxes)
            scores_all.append(s)
            labels_all.append(idx % C)
            start += n
        boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
        keep = torchvision.ops.batched_nms(boxes, scores, labels, iou)
        if maxdet > 0:
            keep = keep[:maxdet]
        results.append((boxes[keep], scores[keep], labels[keep]))
    return results


def main():
    cmd = sys.argv[1]
    torch.set_grad_enabled(False)
    if cmd == "model":
        depth, num_classes, seed, in_dir, out_dir = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
        model = RetinaNetRef(depth, num_classes).eval()
        randomise(model, seed)
        images = read_bundle(in_dir)[0]["images"]
        (c3, c4, c5), ps, reg, cls = model(images)
        anchors = retinanet_anchors(images.shape[2], images.shape[3])
        out = {"c3": c3, "c4": c4, "c5": c5, "regression": reg, "classification": cls, "anchors": anchors,
               "decoded": decode(anchors[None], reg)}
        for i, p in enumerate(ps):
            out["p%d" % (i + 3)] = p
        write_bundle(out_dir, out)
        torch.save(model.state_dict(), out_dir + "/weights.pt")
    elif cmd == "postprocess":
        in_dir, out_dir = sys.argv[2], sys.argv[3]
        score, topk, iou, maxdet = float(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
        t = read_bundle(in_dir)[0]
        res = postprocess(t["regression"], t["classification"], t["anchors"], t["limits"], t["level_sizes"].tolist(),
                          score, topk, iou, maxdet)
        out = {}
        for b, (boxes, scores, labels) in enumerate(res):
            out["boxes%d" % b], out["scores%d" % b], out["labels%d" % b] = boxes, scores, labels
        write_bundle(out_dir, out)
    elif cmd == "backbone":
        depth, seed, in_dir, out_dir = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
        net = getattr(torchvision.models, "resnet%d" % depth)().eval()
        randomise(net, seed)
        x = read_bundle(in_dir)[0]["images"]
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        c3 = net.layer2(net.layer1(x))
        c4 = net.layer3(c3)
        c5 = net.layer4(c4)
        write_bundle(out_dir, {"c3": c3, "c4": c4, "c5": c5})
        torch.save(net.state_dict(), out_dir + "/weights.pt")
    elif cmd == "nms":
        in_dir, out_dir, iou = sys.argv[2], sys.argv[3], float(sys.argv[4])
        t = read_bundle(in_dir)[0]
        write_bundle(out_dir, {"keep": torchvision.ops.nms(t["boxes"], t["scores"], iou),
                               "keep_batched": torchvision.ops.batched_nms(t["boxes"], t["scores"], t["groups"], iou)})
    elif cmd == "anchors":
        write_bundle(sys.argv[4], {"anchors": retinanet_anchors(int(sys.argv[2]), int(sys.argv[3]))})
    else:
        raise SystemExit("unknown command " + cmd)


if __name__ == "__main__":
    main()
