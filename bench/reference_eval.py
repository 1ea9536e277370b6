"""pycocotools COCOeval (bbox) on the benchmark case: prints one JSON line {system, seconds, stats}.
The time covers what a user waits for: loadRes + evaluate + accumulate + summarize."""
import contextlib
import io
import json
import sys
import time

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

gt_file, dt_file = sys.argv[1], sys.argv[2]
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(gt_file)
    t0 = time.perf_counter()
    dt = gt.loadRes(dt_file)
    ev = COCOeval(gt, dt, 'bbox')
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    seconds = time.perf_counter() - t0
print(json.dumps({'system': 'pycocotools COCOeval (Python)', 'seconds': seconds, 'stats': [float(s) for s in ev.stats]}))
