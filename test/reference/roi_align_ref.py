"""Reference for the RoIAlign parity test: torchvision.ops.roi_align (aligned, fixed sampling ratio)
forward, and the gradient of sum(output * weight) with respect to the features.

usage: roi_align_ref.py IN_DIR OUT_DIR device
IN_DIR: features [B, C, H, W], rois [R, 5], weight [R, C, oh, ow]; meta: spatial_scale, sampling_ratio.
"""
import sys

import torch
from torchvision.ops import roi_align

from bundle import read_bundle, write_bundle


def main(in_dir, out_dir, device='cpu'):
    t, meta = read_bundle(in_dir)
    features = t['features'].to(device).requires_grad_(True)
    rois, weight = t['rois'].to(device), t['weight'].to(device)
    out = roi_align(features, rois, output_size=tuple(weight.shape[2:]), spatial_scale=meta['spatial_scale'],
                    sampling_ratio=meta['sampling_ratio'], aligned=True)
    (out * weight).sum().backward()
    write_bundle(out_dir, {'output': out.detach(), 'grad': features.grad}, {'torch': torch.__version__})


if __name__ == '__main__':
    main(*sys.argv[1:])
