"""torchvision's own RetinaNets (retinanet_resnet50_fpn and _v2, random weights, nothing downloaded)
as the reference for onestage's torchvision variants.

usage:
  torchvision_retinanet_ref.py run VARIANT SEED IN_DIR OUT_DIR [WEIGHTS.safetensors]
      VARIANT v1 | v2. Builds the model (91 classes; weights: random with BatchNorm statistics, GroupNorm
      and output layers randomised so that scores spread, or WEIGHTS loaded strictly — the round trip),
      eval mode, on IN_DIR's images [B, 3, H, W] (already normalised: torchvision's
      GeneralizedRCNNTransform is bypassed) and writes OUT_DIR: weights.pt (its state_dict), and a
      bundle with p3..p7 (backbone + FPN), cls_logits, bbox_regression, anchors (image 0) and the
      detections of every image as postprocess_detections gives them (boxes_b, scores_b, labels_b).
"""
import math
import os
import sys

import torch
import torchvision
from torchvision.models.detection import retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2
from torchvision.models.detection.image_list import ImageList

sys.path.insert(0, os.path.dirname(__file__))
from bundle import read_bundle, write_bundle  # noqa: E402
from safetensors_io import read as read_safetensors  # noqa: E402


def build(variant, seed):
    torch.manual_seed(seed)
    maker = retinanet_resnet50_fpn if variant == "v1" else retinanet_resnet50_fpn_v2
    return maker(weights=None, weights_backbone=None, num_classes=91)


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torchvision.ops.FrozenBatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.3 + 0.3)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, torch.nn.GroupNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for head, out in ((model.head.classification_head, "cls_logits"), (model.head.regression_head, "bbox_reg")):
            conv = getattr(head, out)
            fan_in = conv.weight[0].numel()
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (0.5 / math.sqrt(fan_in)))
            if out == "cls_logits":
                conv.bias.copy_(torch.rand(conv.bias.shape, generator=g) * -3)


def run(variant, seed, in_dir, out_dir, weights=None):
    model = build(variant, seed)
    if weights:
        state, _, _ = read_safetensors(weights)
        model.load_state_dict(state, strict=True)
    else:
        randomise(model, seed)
    model.eval()
    images = torch.as_tensor(read_bundle(in_dir)[0]["images"])
    B, _, H, W = images.shape
    with torch.no_grad():
        feats = list(model.backbone(images).values())
        head = model.head(feats)
        image_list = ImageList(images, [(H, W)] * B)
        anchors = model.anchor_generator(image_list, feats)
        per_level = [f.size(2) * f.size(3) for f in feats]
        A = head["cls_logits"].size(1) // sum(per_level)
        per_level = [n * A for n in per_level]
        split_head = {k: list(v.split(per_level, dim=1)) for k, v in head.items()}
        split_anchors = [list(a.split(per_level)) for a in anchors]
        dets = model.postprocess_detections(split_head, split_anchors, image_list.image_sizes)
    os.makedirs(out_dir, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(out_dir, "weights.pt"))
    out = {f"p{l + 3}": f for l, f in enumerate(feats)}
    out["cls_logits"] = head["cls_logits"]
    out["bbox_regression"] = head["bbox_regression"]
    out["anchors"] = anchors[0]
    for b, d in enumerate(dets):
        out[f"boxes_{b}"] = d["boxes"]
        out[f"scores_{b}"] = d["scores"]
        out[f"labels_{b}"] = d["labels"]
    write_bundle(out_dir, out, {"torchvision": torchvision.__version__, "variant": variant})


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6] if len(sys.argv) > 6 else None)
    else:
        sys.exit(__doc__)
