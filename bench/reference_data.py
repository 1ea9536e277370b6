"""pytorch-retinanet's input pipeline, single process, on a COCO file: skimage.io.imread, /255,
Augmenter (flip p 0.5), Normalizer, Resizer (short side 608, long side ≤ 1024, skimage.transform.resize,
pad to a multiple of 32 — with its extra 32 when already divisible), collater (zero-padded batch).
usage: reference_data.py INSTANCES_JSON BATCH  → JSON {images, seconds} on stdout"""
import json
import os
import sys
import time

import numpy as np
import skimage.io
import skimage.transform
import torch

MEAN = np.array([[[0.485, 0.456, 0.406]]])
STD = np.array([[[0.229, 0.224, 0.225]]])


def load(path, annots):
    img = skimage.io.imread(path)
    if len(img.shape) == 2:
        img = skimage.color.gray2rgb(img)
    img = img.astype(np.float32) / 255.0
    if np.random.rand() < 0.5:  # Augmenter
        img = img[:, ::-1, :]
        x1 = annots[:, 0].copy()
        x2 = annots[:, 2].copy()
        annots[:, 0] = img.shape[1] - x2
        annots[:, 2] = img.shape[1] - x1
    img = (img.astype(np.float32) - MEAN) / STD  # Normalizer
    rows, cols, _ = img.shape  # Resizer
    scale = 608 / min(rows, cols)
    if max(rows, cols) * scale > 1024:
        scale = 1024 / max(rows, cols)
    img = skimage.transform.resize(img, (int(round(rows * scale)), int(round(cols * scale))))
    rows, cols, _ = img.shape
    pad_w, pad_h = 32 - rows % 32, 32 - cols % 32
    new = np.zeros((rows + pad_w, cols + pad_h, 3)).astype(np.float32)
    new[:rows, :cols, :] = img.astype(np.float32)
    annots[:, :4] *= scale
    return torch.from_numpy(new), torch.from_numpy(annots), scale


def collate(samples):
    imgs = [s[0] for s in samples]
    h = max(i.shape[0] for i in imgs)
    w = max(i.shape[1] for i in imgs)
    padded = torch.zeros(len(imgs), h, w, 3)
    for k, i in enumerate(imgs):
        padded[k, :i.shape[0], :i.shape[1], :] = i
    return padded.permute(0, 3, 1, 2)


def main():
    coco = json.load(open(sys.argv[1]))
    batch = int(sys.argv[2])
    root = os.path.dirname(sys.argv[1])
    by_image = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        by_image[a["image_id"]].append([x, y, x + w, y + h, 0])
    np.random.seed(0)
    t0 = time.perf_counter()
    n = 0
    samples = []
    for im in coco["images"]:
        ann = np.array(by_image[im["id"]] or np.zeros((0, 5)), dtype=np.float64).reshape(-1, 5)
        samples.append(load(os.path.join(root, im["file_name"]), ann))
        if len(samples) == batch:
            collate(samples)
            n += len(samples)
            samples = []
    if samples:
        collate(samples)
        n += len(samples)
    print(json.dumps({"images": n, "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
