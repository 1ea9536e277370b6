"""NanoDet-Plus references, written from NanoDet-Plus' description and code structure, looping over
images and GTs as it does (its target_assign_single_img per image, its per-GT dynamic-k loop):
  assign IN OUT     DynamicSoftLabelAssigner(topk 13, iou_factor 3) per image on logits (current
                    NanoDet: BCE with logits); IN logits [B,N,C], priors [N,4], decoded [B,N,4],
                    annotations [B,M,5] (label -1 pads) → gt_index [B,N] (0-based, -1), labels, ious
  loss IN OUT       the NanoDet-Plus head loss (QFL β 2, GIoU ×2, DFL ×0.25, NanoDet-Plus normalisers)
                    on preds [B,N,C+4(R+1)] and, when IN has aux_preds, the AGM (assignment by the
                    auxiliary predictions, main + aux losses); gradients of the total w.r.t. both
  pieces IN OUT     qfl / dfl / giou per sample and gradients, Integral, distance2bbox, bbox2distance,
                    priors for meta height/width/strides
"""
import math
import sys

import torch
import torch.nn.functional as F

from bundle import read_bundle, write_bundle


def priors_for(h, w, strides):
    out = []
    for s in strides:
        fh, fw = math.ceil(h / s), math.ceil(w / s)
        ys = torch.arange(fh, dtype=torch.float32) * s
        xs = torch.arange(fw, dtype=torch.float32) * s
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        st = torch.full((fh * fw,), float(s))
        out.append(torch.stack([x.flatten(), y.flatten(), st, st], -1))
    return torch.cat(out, 0)


def integral(reg, reg_max):
    shape = reg.shape
    p = F.softmax(reg.reshape(*shape[:-1], 4, reg_max + 1), dim=-1)
    return F.linear(p, torch.linspace(0, reg_max, reg_max + 1, device=reg.device)).reshape(*shape[:-1], 4)


def distance2bbox(points, d):
    return torch.stack([points[..., 0] - d[..., 0], points[..., 1] - d[..., 1], points[..., 0] + d[..., 2], points[..., 1] + d[..., 3]], -1)


def bbox2distance(points, b):
    return torch.stack([points[..., 0] - b[..., 0], points[..., 1] - b[..., 1], b[..., 2] - points[..., 0], b[..., 3] - points[..., 1]], -1)


def bbox_overlaps(a, b, eps=1e-6):
    area1 = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area2 = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = torch.max(area1[:, None] + area2[None, :] - overlap, torch.tensor([eps], device=a.device))
    return overlap / union


def giou_loss(pred, target, eps=1e-6):
    area1 = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area2 = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    e = torch.tensor([eps], device=pred.device)
    union = torch.max(area1 + area2 - overlap, e)
    ious = overlap / union
    elt = torch.min(pred[:, :2], target[:, :2])
    erb = torch.max(pred[:, 2:], target[:, 2:])
    ewh = (erb - elt).clamp(min=0)
    enclose = torch.max(ewh[:, 0] * ewh[:, 1], e)
    return 1 - (ious - (enclose - union) / enclose)


def qfl(pred, label, score, beta=2.0):
    sig = pred.sigmoid()
    loss = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none") * sig.pow(beta)
    pos = torch.nonzero((label >= 0) & (label < pred.size(1)), as_tuple=False).squeeze(1)
    pl = label[pos].long()
    sf = score[pos] - sig[pos, pl]
    loss[pos, pl] = F.binary_cross_entropy_with_logits(pred[pos, pl], score[pos], reduction="none") * sf.abs().pow(beta)
    return loss.sum(dim=1)


def dfl(pred, label):
    left = label.long()
    right = left + 1
    return F.cross_entropy(pred, left, reduction="none") * (right.float() - label) + F.cross_entropy(pred, right, reduction="none") * (label - left.float())


def assign_one(logits, priors, decoded, gt, gt_labels, topk=13, iou_factor=3.0):
    """One image, as DynamicSoftLabelAssigner.assign: → gt index (0-based, −1) and IoU per prior."""
    n = decoded.size(0)
    gt_index = torch.full((n,), -1, dtype=torch.long, device=decoded.device)
    ious_out = torch.zeros(n, device=decoded.device)
    num_gt = gt.size(0)
    if num_gt == 0:
        return gt_index, ious_out
    centre = priors[:, :2]
    deltas = torch.cat([centre[:, None] - gt[:, :2], gt[:, 2:] - centre[:, None]], dim=-1)
    valid = (deltas.min(dim=-1).values > 0).sum(dim=1) > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        return gt_index, ious_out
    vb, vs = decoded[valid], logits[valid]
    pious = bbox_overlaps(vb, gt)
    iou_cost = -torch.log(pious + 1e-7)
    onehot = F.one_hot(gt_labels.long(), logits.shape[-1]).float().unsqueeze(0).repeat(num_valid, 1, 1)
    vs = vs.unsqueeze(1).repeat(1, num_gt, 1)
    soft = onehot * pious[..., None]
    scale = soft - vs.sigmoid()
    cls_cost = (F.binary_cross_entropy_with_logits(vs, soft, reduction="none") * scale.abs().pow(2.0)).sum(-1)
    cost = cls_cost + iou_cost * iou_factor
    matching = torch.zeros_like(cost)
    k = min(topk, pious.size(0))
    topk_ious, _ = torch.topk(pious, k, dim=0)
    dks = torch.clamp(topk_ious.sum(0).int(), min=1)
    for g in range(num_gt):
        _, idx = torch.topk(cost[:, g], k=int(dks[g]), largest=False)
        matching[:, g][idx] = 1.0
    multi = matching.sum(1) > 1
    if multi.sum() > 0:
        _, amin = torch.min(cost[multi, :], dim=1)
        matching[multi, :] *= 0.0
        matching[multi, amin] = 1.0
    fg = matching.sum(1) > 0.0
    vidx = torch.nonzero(valid).squeeze(1)[fg]
    gt_index[vidx] = matching[fg, :].argmax(1)
    ious_out[vidx] = (matching * pious).sum(1)[fg]
    return gt_index, ious_out


def real_gt(ann):
    keep = ann[:, 4] >= 0
    return ann[keep, :4], ann[keep, 4].long(), torch.nonzero(keep).squeeze(1)


def assign_batch(logits, priors, decoded, ann):
    B, N = logits.shape[:2]
    dev = logits.device
    gi = torch.full((B, N), -1, dtype=torch.long, device=dev)
    lab = torch.full((B, N), -1, dtype=torch.long, device=dev)
    ious = torch.zeros(B, N, device=dev)
    for b in range(B):
        gt, gl, rows = real_gt(ann[b])
        idx, iou = assign_one(logits[b], priors, decoded[b], gt, gl)
        pos = idx >= 0
        gi[b, pos] = rows[idx[pos]]
        lab[b, pos] = gl[idx[pos]]
        ious[b] = iou
    return gi, lab, ious


def head_loss(preds, priors, ann, gi, ious, C, R):
    B, N = preds.shape[:2]
    cls, reg = preds.split([C, 4 * (R + 1)], dim=-1)
    decoded = distance2bbox(priors[None, :, :2], integral(reg, R) * priors[None, :, 2, None])
    labels, scores, boxes, dists, num_pos = [], [], [], [], 0
    for b in range(B):
        dev = preds.device
        lb = torch.full((N,), C, dtype=torch.long, device=dev)
        sc = torch.zeros(N, device=dev)
        bx = torch.zeros(N, 4, device=dev)
        ds = torch.zeros(N, 4, device=dev)
        pos = torch.nonzero(gi[b] >= 0).squeeze(1)
        if len(pos) > 0:
            g = ann[b, gi[b, pos]]
            bx[pos] = g[:, :4]
            ds[pos] = bbox2distance(priors[pos, :2], g[:, :4]) / priors[pos, None, 2]
            ds = ds.clamp(min=0, max=R - 0.1)
            lb[pos] = g[:, 4].long()
            sc[pos] = ious[b, pos]
        num_pos += len(pos)
        labels.append(lb), scores.append(sc), boxes.append(bx), dists.append(ds)
    labels, scores, boxes, dists = torch.cat(labels), torch.cat(scores), torch.cat(boxes), torch.cat(dists)
    cls = cls.reshape(-1, C)
    reg = reg.reshape(-1, 4 * (R + 1))
    decoded = decoded.reshape(-1, 4)
    total = max(float(num_pos), 1.0)
    l_qfl = qfl(cls, labels, scores).sum() / total
    pos = torch.nonzero((labels >= 0) & (labels < C)).squeeze(1)
    if len(pos) > 0:
        w = cls[pos].detach().sigmoid().max(dim=1)[0]
        avg = max(float(w.sum()), 1.0)
        l_bbox = 2.0 * (giou_loss(decoded[pos], boxes[pos]) * w).sum() / avg
        l_dfl = 0.25 * (dfl(reg[pos].reshape(-1, R + 1), dists[pos].reshape(-1)) * w[:, None].expand(-1, 4).reshape(-1)).sum() / (4.0 * avg)
    else:
        l_bbox = reg.sum() * 0
        l_dfl = reg.sum() * 0
    return l_qfl, l_bbox, l_dfl


def main():
    cmd, src, dst = sys.argv[1:4]
    t, meta = read_bundle(src)
    out = {}
    if cmd == "assign":
        gi, lab, ious = assign_batch(t["logits"], t["priors"], t["decoded"], t["annotations"])
        out = {"gt_index": gi, "labels": lab, "ious": ious}
    elif cmd == "loss":
        C, R = int(meta["num_classes"]), int(meta.get("reg_max", 7))
        preds = t["preds"].clone().requires_grad_(True)
        aux = t["aux_preds"].clone().requires_grad_(True) if "aux_preds" in t else None
        priors, ann = t["priors"], t["annotations"]
        by = aux if aux is not None else preds
        with torch.no_grad():
            dec = distance2bbox(priors[None, :, :2], integral(by[..., C:], R) * priors[None, :, 2, None])
            gi, _, ious = assign_batch(by[..., :C], priors, dec, ann)
        parts = head_loss(preds, priors, ann, gi, ious, C, R)
        out = {"qfl": parts[0].detach(), "bbox": parts[1].detach(), "dfl": parts[2].detach(), "gt_index": gi}
        total = parts[0] + parts[1] + parts[2]
        if aux is not None:
            ap = head_loss(aux, priors, ann, gi, ious, C, R)
            out.update({"aux_qfl": ap[0].detach(), "aux_bbox": ap[1].detach(), "aux_dfl": ap[2].detach()})
            total = total + ap[0] + ap[1] + ap[2]
        total.backward()
        out["total"] = total.detach()
        out["grad_preds"] = preds.grad
        if aux is not None:
            out["grad_aux_preds"] = aux.grad
    elif cmd == "pieces":
        R = int(meta.get("reg_max", 7))
        p = t["qfl_pred"].clone().requires_grad_(True)
        lq = qfl(p, t["qfl_label"], t["qfl_score"])
        lq.sum().backward()
        d = t["dfl_pred"].clone().requires_grad_(True)
        ld = dfl(d, t["dfl_label"])
        ld.sum().backward()
        g = t["giou_pred"].clone().requires_grad_(True)
        lg = giou_loss(g, t["giou_target"])
        lg.sum().backward()
        dist = integral(t["reg"], R)
        out = {"qfl": lq.detach(), "grad_qfl": p.grad, "dfl": ld.detach(), "grad_dfl": d.grad, "giou": lg.detach(), "grad_giou": g.grad,
               "integral": dist, "boxes": distance2bbox(t["points"], dist), "distances": bbox2distance(t["points"], t["giou_target"]),
               "priors": priors_for(int(meta["height"]), int(meta["width"]), meta["strides"])}
    else:
        raise SystemExit("unknown command " + cmd)
    write_bundle(dst, out)


if __name__ == "__main__":
    main()
