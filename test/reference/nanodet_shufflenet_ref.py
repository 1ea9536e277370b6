"""NanoDet-Plus as its authors ship it — ShuffleNetV2 (nanodet/model/backbone/shufflenetv2.py), Ghost-PAN
(nanodet/model/fpn/ghost_pan.py with ghostnet.py's GhostBottleneck and GhostModule), NanoDetPlusHead and the
AGM (SimpleConvHead on an aux_fpn copy) — written from NanoDet's code, in its module layout, so that its
state_dict keys are NanoDet's. LeakyReLU(0.1) throughout, as the NanoDet-Plus configs choose.

usage: nanodet_shufflenet_ref.py flops                            (FLOPs and parameters of the presets)
       nanodet_shufflenet_ref.py WIDTH PAN HEAD AUX NUM_CLASSES SEED IN_DIR OUT_DIR [ONESTAGE.safetensors]
       nanodet_shufflenet_ref.py ckpt WEIGHTS.pt OUT.ckpt        (a Lightning checkpoint of those weights)
       nanodet_shufflenet_ref.py tv-shufflenet WIDTH OUT.pt      (torchvision's ShuffleNetV2 state_dict)
       nanodet_shufflenet_ref.py WIDTH PAN_CHANNELS HEAD_CHANNELS AUX_CHANNELS NUM_CLASSES SEED IN_DIR OUT_DIR
  random weights (BatchNorm statistics and affine randomised) → OUT_DIR/weights.pt and a bundle with
  c3..c5 (stage2..4), p3..p6 (Ghost-PAN), preds (the head, [B, N, C + 32]); prints the parameter
  counts of backbone, fpn and head (inference) and of the whole model as JSON.
"""
import copy
import json
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from bundle import read_bundle, write_bundle  # noqa: E402
from safetensors_io import read as read_safetensors  # noqa: E402
from train_ref import DepthwiseConvModule, NanoDetPlusHeadRef, SimpleConvHeadRef  # noqa: E402

LEAKY = 0.1


def act():
    return nn.LeakyReLU(LEAKY, inplace=True)


def channel_shuffle(x, groups):
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ShuffleV2Block(nn.Module):
    def __init__(self, inp, oup, stride):
        super().__init__()
        self.stride = stride
        bf = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
                                         nn.Conv2d(inp, bf, 1, bias=False), nn.BatchNorm2d(bf), act())
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(nn.Conv2d(inp if stride > 1 else bf, bf, 1, bias=False), nn.BatchNorm2d(bf), act(),
                                     nn.Conv2d(bf, bf, 3, stride, 1, groups=bf, bias=False), nn.BatchNorm2d(bf),
                                     nn.Conv2d(bf, bf, 1, bias=False), nn.BatchNorm2d(bf), act())

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


WIDTHS = {"0.5x": [24, 48, 96, 192], "1.0x": [24, 116, 232, 464], "1.5x": [24, 176, 352, 704], "2.0x": [24, 244, 488, 976]}


class ShuffleNetV2(nn.Module):
    def __init__(self, width):
        super().__init__()
        ch = WIDTHS[width]
        self.conv1 = nn.Sequential(nn.Conv2d(3, ch[0], 3, 2, 1, bias=False), nn.BatchNorm2d(ch[0]), act())
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = ch[0]
        for name, repeats, cout in zip(["stage2", "stage3", "stage4"], [4, 8, 4], ch[1:]):
            setattr(self, name, nn.Sequential(ShuffleV2Block(cin, cout, 2), *[ShuffleV2Block(cout, cout, 1) for _ in range(repeats - 1)]))
            cin = cout
        self.channels = ch[1:]

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        c3 = self.stage2(x)
        c4 = self.stage3(c3)
        c5 = self.stage4(c4)
        return c3, c4, c5


class GhostModule(nn.Module):
    def __init__(self, inp, oup, activation=True):
        super().__init__()
        init = math.ceil(oup / 2)
        self.primary_conv = nn.Sequential(nn.Conv2d(inp, init, 1, 1, 0, bias=False), nn.BatchNorm2d(init), act() if activation else nn.Sequential())
        self.cheap_operation = nn.Sequential(nn.Conv2d(init, init, 3, 1, 1, groups=init, bias=False), nn.BatchNorm2d(init), act() if activation else nn.Sequential())

    def forward(self, x):
        x1 = self.primary_conv(x)
        return torch.cat([x1, self.cheap_operation(x1)], dim=1)


class GhostBottleneck(nn.Module):
    def __init__(self, cin, mid, cout, k):
        super().__init__()
        self.ghost1 = GhostModule(cin, mid, True)
        self.ghost2 = GhostModule(mid, cout, False)
        if cin == cout:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cin, k, 1, (k - 1) // 2, groups=cin, bias=False), nn.BatchNorm2d(cin),
                                          nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.ghost2(self.ghost1(x)) + self.shortcut(x)


class GhostBlocks(nn.Module):
    def __init__(self, cin, cout, expand, k, n):
        super().__init__()
        self.blocks = nn.Sequential(*[GhostBottleneck(cin, int(cout * expand), cout, k) for _ in range(n)])

    def forward(self, x):
        return self.blocks(x)


class ConvModule(nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.leaky_relu(self.bn(self.conv(x)), LEAKY)


class GhostPAN(nn.Module):
    def __init__(self, in_channels, out, k=5, expand=1, num_blocks=1, extra=1):
        super().__init__()
        self.in_channels = in_channels
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear")
        self.reduce_layers = nn.ModuleList([ConvModule(c, out, 1) for c in in_channels])
        self.top_down_blocks = nn.ModuleList([GhostBlocks(out * 2, out, expand, k, num_blocks) for _ in range(len(in_channels) - 1)])
        self.downsamples = nn.ModuleList([DepthwiseConvModule(out, out, k, 2) for _ in range(len(in_channels) - 1)])
        self.bottom_up_blocks = nn.ModuleList([GhostBlocks(out * 2, out, expand, k, num_blocks) for _ in range(len(in_channels) - 1)])
        self.extra_lvl_in_conv = nn.ModuleList([DepthwiseConvModule(out, out, k, 2) for _ in range(extra)])
        self.extra_lvl_out_conv = nn.ModuleList([DepthwiseConvModule(out, out, k, 2) for _ in range(extra)])

    def forward(self, inputs):
        inputs = [r(x) for x, r in zip(inputs, self.reduce_layers)]
        n = len(self.in_channels)
        inner = [inputs[-1]]
        for idx in range(n - 1, 0, -1):
            up = self.upsample(inner[0])
            inner.insert(0, self.top_down_blocks[n - 1 - idx](torch.cat([up, inputs[idx - 1]], 1)))
        outs = [inner[0]]
        for idx in range(n - 1):
            down = self.downsamples[idx](outs[-1])
            outs.append(self.bottom_up_blocks[idx](torch.cat([down, inner[idx + 1]], 1)))
        for a, b in zip(self.extra_lvl_in_conv, self.extra_lvl_out_conv):
            outs.append(a(inputs[-1]) + b(outs[-1]))
        return outs


class NanoDetPlusM(nn.Module):
    def __init__(self, width, pan, head, aux, num_classes):
        super().__init__()
        self.backbone = ShuffleNetV2(width)
        self.fpn = GhostPAN(self.backbone.channels, pan)
        self.aux_fpn = copy.deepcopy(self.fpn)
        self.head = NanoDetPlusHeadRef(num_classes, pan, head, 2, 5, 7, 4)
        self.aux_head = SimpleConvHeadRef(num_classes, 2 * pan, aux, 4, 32, 7, 4)

    def forward(self, x, detach):
        """Training forward as NanoDet-Plus: main predictions and the AGM's on [main | aux] pyramids."""
        feats = self.backbone(x)
        ps = self.fpn(list(feats))
        preds = self.head(ps)
        if detach:
            feats = [f.detach() for f in feats]
        aux_ps = self.aux_fpn(list(feats))
        dual = [torch.cat([p.detach() if detach else p, a], 1) for p, a in zip(ps, aux_ps)]
        return preds, self.aux_head(dual)


def main():
    width, pan, head, aux, num_classes, seed, in_dir, out_dir = sys.argv[1:9]
    torch.manual_seed(int(seed))
    model = NanoDetPlusM(width, int(pan), int(head), int(aux), int(num_classes))
    g = torch.Generator().manual_seed(int(seed) + 1000)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(m.weight[0].numel()))
    if len(sys.argv) > 9:
        # the round trip: weights onestage saved (safetensors, NanoDet's key names) load strictly
        state, _, _ = read_safetensors(sys.argv[9])
        model.load_state_dict(state, strict=True)
    model.eval()
    x = torch.as_tensor(read_bundle(in_dir)[0]["images"])
    with torch.no_grad():
        c3, c4, c5 = model.backbone(x)
        ps = model.fpn([c3, c4, c5])
        preds = model.head(ps)
    os.makedirs(out_dir, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(out_dir, "weights.pt"))
    out = {"c3": c3, "c4": c4, "c5": c5, "preds": preds}
    out.update({f"p{l + 3}": p for l, p in enumerate(ps)})
    write_bundle(out_dir, out, {"width": width})
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    print(json.dumps({"backbone": count(model.backbone), "fpn": count(model.fpn), "head": count(model.head), "all": count(model)}))


def ckpt(src, out):
    """A PyTorch Lightning checkpoint as NanoDet's trainer writes it: the model under 'model.', its weight
    average under 'avg_model.' (every float tensor + 0.001 here, so that a test can tell which was loaded)."""
    state = torch.load(src)
    sd = {f"model.{k}": v for k, v in state.items()}
    sd.update({f"avg_model.{k}": (v + 0.001 if v.is_floating_point() else v) for k, v in state.items()})
    torch.save({"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.9.0", "state_dict": sd}, out)


def tv_shufflenet(width, out):
    """torchvision's shufflenet_v2 of this width (random weights, nothing downloaded): its state_dict."""
    import torchvision
    maker = {"0.5x": torchvision.models.shufflenet_v2_x0_5, "1.0x": torchvision.models.shufflenet_v2_x1_0,
             "1.5x": torchvision.models.shufflenet_v2_x1_5, "2.0x": torchvision.models.shufflenet_v2_x2_0}[width]
    torch.manual_seed(0)
    torch.save(maker(weights=None).state_dict(), out)


def flops():
    """FLOPs (2 x the multiply-adds of every convolution) of the inference network (backbone, Ghost-PAN,
    head; 80 classes) of the released NanoDet-Plus-m configurations, as NanoDet's README counts them."""
    for name, w, p, h, a, size in (("m-320", "1.0x", 96, 96, 192, 320), ("m-416", "1.0x", 96, 96, 192, 416),
                                   ("m-1.5x-320", "1.5x", 128, 128, 256, 320), ("m-1.5x-416", "1.5x", 128, 128, 256, 416)):
        model = NanoDetPlusM(w, p, h, a, 80).eval()
        macs = [0]

        def hook(mod, _inp, out):
            macs[0] += out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]

        for part in (model.backbone, model.fpn, model.head):
            for mod in part.modules():
                if isinstance(mod, nn.Conv2d):
                    mod.register_forward_hook(hook)
        with torch.no_grad():
            model.head(model.fpn(list(model.backbone(torch.zeros(1, 3, size, size)))))
        params = sum(q.numel() for part in (model.backbone, model.fpn, model.head) for q in part.parameters())
        print(json.dumps({"preset": name, "gflops": round(2 * macs[0] / 1e9, 3), "parameters": params}))


if __name__ == "__main__":
    if sys.argv[1] == "flops":
        flops()
    elif sys.argv[1] == "ckpt":
        ckpt(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "tv-shufflenet":
        tv_shufflenet(sys.argv[2], sys.argv[3])
    else:
        main()
