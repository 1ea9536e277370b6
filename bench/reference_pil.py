"""The decode + resize + flip of a torchvision-style pipeline with Pillow, one process: Image.open,
convert('RGB'), resize(BILINEAR), transpose(FLIP_LEFT_RIGHT) for every other picture — what onestage's
JPEG decoder reproduces byte for byte (bench/data.ts --stages times both on the same files).
usage: reference_pil.py CASES_JSON  (a list of [file, width, height, flip]; width 0: no resize)
→ JSON {images, seconds} on stdout (the second of two passes; the first warms the file cache)"""
import json
import sys
import time

from PIL import Image


def run(cases):
    for file, w, h, flip in cases:
        im = Image.open(file).convert("RGB")
        if w:
            im = im.resize((w, h), Image.BILINEAR)
        if flip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        im.tobytes()


def main():
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    run(cases)
    t0 = time.perf_counter()
    run(cases)
    print(json.dumps({"images": len(cases), "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
