/**
 * torchvision's RetinaNets in onestage: recognising a torchvision detection state_dict by its keys
 * (variant, depth, sizes, class count) and COCO's 91-slot class layout of its COCO weights.
 */
import { native } from './binding';
import type { ResNetDepth } from './model';
import { readSafetensorsHeader } from './safetensors';

/** torchvision's COCO category names by label (91 slots: `__background__` and `N/A` where COCO has no class). */
export const COCO_91_CLASSES: readonly string[] = ["__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush"];

export type RetinaNetVariant = 'pytorch-retinanet' | 'torchvision' | 'torchvision-v2';
export const RETINANET_VARIANTS: readonly RetinaNetVariant[] = ['pytorch-retinanet', 'torchvision', 'torchvision-v2'];

export interface WeightEntry {
  name: string;
  shape: number[];
}

/** Tensor names and shapes of a weights file (.safetensors header, or a torch.save'd state_dict read without running code). */
export function weightEntries(file: string): WeightEntry[] {
  if (file.endsWith('.safetensors')) return readSafetensorsHeader(file).entries.map((e) => ({ name: e.name, shape: e.shape }));
  return native().torchFileEntries(file);
}

export interface TorchvisionLayout {
  variant: 'torchvision' | 'torchvision-v2';
  depth: ResNetDepth;
  numClasses: number;
  featureSize: number;
  anchorsPerLocation: number;
}

const CLS = 'head.classification_head.cls_logits.weight';
const REG = 'head.regression_head.bbox_reg.weight';

/**
 * The layout of a torchvision RetinaNet state_dict, or null when the file is not one (no torchvision
 * head keys). A file with torchvision head keys but keys missing elsewhere is an error naming them.
 */
export function torchvisionLayout(entries: WeightEntry[], file = 'weights'): TorchvisionLayout | null {
  const stripped = entries.every((e) => e.name.startsWith('module.')) ? entries.map((e) => ({ ...e, name: e.name.slice(7) })) : entries;
  const byName = new Map(stripped.map((e) => [e.name, e.shape]));
  if (!byName.has(CLS) && !byName.has(REG)) return null;
  const required = [CLS, REG, 'backbone.body.conv1.weight', 'backbone.body.layer1.0.conv1.weight', 'backbone.body.layer4.0.conv1.weight', 'backbone.fpn.extra_blocks.p6.weight', 'backbone.fpn.extra_blocks.p7.weight'];
  const missing = required.filter((k) => !byName.has(k));
  if (missing.length) throw new Error(`${file}: torchvision RetinaNet keys expected but missing: ${missing.join(', ')} (first keys of the file: ${stripped.slice(0, 5).map((e) => e.name).join(', ')})`);
  const reg = byName.get(REG)!;
  const cls = byName.get(CLS)!;
  const anchorsPerLocation = reg[0] / 4;
  if (!Number.isInteger(anchorsPerLocation) || cls[0] % anchorsPerLocation !== 0) throw new Error(`${file}: ${REG} ${JSON.stringify(reg)} and ${CLS} ${JSON.stringify(cls)} do not fit one anchor count`);
  const featureSize = cls[1];
  const p6 = byName.get('backbone.fpn.extra_blocks.p6.weight')!;
  const gn = byName.has('head.classification_head.conv.0.1.weight');
  const variant = p6[1] === featureSize && !gn ? 'torchvision' : 'torchvision-v2';
  const bottleneck = byName.has('backbone.body.layer1.0.conv3.weight');
  let blocks3 = 0;
  while (byName.has(`backbone.body.layer3.${blocks3}.conv1.weight`)) blocks3++;
  const depths: Record<string, ResNetDepth> = { 'false:2': 18, 'false:6': 34, 'true:6': 50, 'true:23': 101, 'true:36': 152 };
  const depth = depths[`${bottleneck}:${blocks3}`];
  if (!depth) throw new Error(`${file}: a ResNet with ${blocks3} blocks in layer3 (${bottleneck ? 'bottleneck' : 'basic'} blocks) is not one of ResNet-18/34/50/101/152`);
  return { variant, depth, numClasses: cls[0] / anchorsPerLocation, featureSize, anchorsPerLocation };
}
