"""VOC-style AP reference (numpy), written from the definition used by mmdetection's eval_map:
per class, detections sorted by score (stable), each matched to the ground-truth box of highest IoU
(IoU over all GT of the image, ignore regions included, boxes x1y1x2y2 without +1); IoU >= thr:
an ignore region -> neither TP nor FP, an unmatched GT -> TP, a matched GT -> FP; else FP.
AP = area under the monotone precision envelope over all recall points ('area' mode).
Input: a JSON file {gt: COCO-form ground truth, dets: COCO results, thr}; output: JSON {map, ap}."""
import json
import sys

import numpy as np


def iou_matrix(dets, gts):
    out = np.zeros((len(dets), len(gts)))
    for i, d in enumerate(dets):
        for j, g in enumerate(gts):
            x1, y1 = max(d[0], g[0]), max(d[1], g[1])
            x2, y2 = min(d[0] + d[2], g[0] + g[2]), min(d[1] + d[3], g[1] + g[3])
            w, h = x2 - x1, y2 - y1
            if w <= 0 or h <= 0:
                continue
            inter = w * h
            out[i, j] = inter / (d[2] * d[3] + g[2] * g[3] - inter)
    return out


def average_precision(recalls, precisions):
    mrec = np.concatenate(([0.0], recalls, [1.0]))
    mpre = np.concatenate(([0.0], precisions, [0.0]))
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def main():
    case = json.load(open(sys.argv[1]))
    gt, dets, thr = case['gt'], case['dets'], case['thr']
    aps = {}
    for cat in sorted(c['id'] for c in gt['categories']):
        by_image = {}
        for a in gt['annotations']:
            if a['category_id'] == cat:
                by_image.setdefault(a['image_id'], []).append(a)
        num_gts = sum(1 for a in gt['annotations'] if a['category_id'] == cat and not (a.get('iscrowd') or a.get('ignore')))
        cdets = [d for d in dets if d['category_id'] == cat]
        order = np.argsort([-d['score'] for d in cdets], kind='mergesort')
        tp = np.zeros(len(cdets))
        fp = np.zeros(len(cdets))
        covered = {img: np.zeros(len(v), bool) for img, v in by_image.items()}
        for rank, i in enumerate(order):
            d = cdets[i]
            g = by_image.get(d['image_id'], [])
            if not g:
                fp[rank] = 1
                continue
            ious = iou_matrix([d['bbox']], [a['bbox'] for a in g])[0]
            j = int(np.argmax(ious))
            if ious[j] >= thr:
                if g[j].get('iscrowd') or g[j].get('ignore'):
                    continue
                if not covered[d['image_id']][j]:
                    covered[d['image_id']][j] = True
                    tp[rank] = 1
                else:
                    fp[rank] = 1
            else:
                fp[rank] = 1
        if num_gts == 0:
            aps[cat] = -1.0
            continue
        tps, fps = np.cumsum(tp), np.cumsum(fp)
        keep = (tp + fp) > 0  # ignored detections add no point
        recalls = (tps / num_gts)[keep]
        precisions = (tps / np.maximum(tps + fps, np.finfo(np.float64).eps))[keep]
        aps[cat] = average_precision(recalls, precisions)
    valid = [v for v in aps.values() if v >= 0]
    print(json.dumps({'map': float(np.mean(valid)) if valid else -1.0, 'ap': {str(k): v for k, v in aps.items()}}))


if __name__ == '__main__':
    main()
