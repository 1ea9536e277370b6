/**
 * onestage: one-stage object detectors with imbalance-aware losses, on LibTorch, for Node.js.
 * @packageDocumentation
 */
// first: sizes libuv's thread pool before anything starts it (lib/threadpool.ts)
import './threadpool';
export { buildInfo, setNumThreads, getNumThreads, manualSeed, setTf32, setCudnnBenchmark, synchronize, profilerAvailable, startProfiler, stopProfiler, cudaMemory, cpuMemory, emptyCpuCache } from './runtime';
export type { CpuMemory } from './binding';
export type { BuildInfo } from './runtime';
export { Tensor, liveTensors, DTYPES } from './tensor';
export type { DType, Device, TensorOptions, TensorData, TypedArrayOf } from './tensor';
export { Model, MODEL_METADATA_KEY } from './model';
export type { OnnxExportOptions, OnnxExportResult } from './onnx/export';
export { COCO_91_CLASSES, RETINANET_VARIANTS, torchvisionLayout, weightEntries } from './torchvision';
export type { RetinaNetVariant, TorchvisionLayout, WeightEntry } from './torchvision';
export type { RetinaNetOptions, NanoDetPlusOptions, ModelConfig, ForwardOutput as RetinaNetForwardOutput, NanoDetPlusForwardOutput, PyramidOutput, DetectOptions, ForwardOptions, DetectBatch, Detection, ForwardOutput, LoadWeightsOptions, LoadReport, ModelInfo, ResNetDepth, FromWeightsOptions } from './model';
export { generateAnchors, encodeBoxes, decodeBoxes, boxIou, clipBoxes, nms, batchedNms, roiAlign, centrePriors, distanceToBox, boxToDistance, integralDistances } from './geometry';
export type { AnchorOptions, BoxCoderOptions, RoiAlignOptions } from './geometry';
export { MaxIoUAssigner, FocalLoss, GHMC, GHMR, RetinaNetLoss, sigmoidFocalLoss, lossRecipe, LOSS_RECIPES } from './losses';
export type { LossRecipe, LossRecipeName, AssignerOptions, Assignment, FocalLossOptions, GhmOptions, GhmrOptions, RetinaNetLossOptions, ContrastiveTrainingOptions, DetectionLossInput, LossValue } from './losses';
export { QualityFocalLoss, DistributionFocalLoss, GIoULoss, DSLAssigner, NanoDetPlusLoss } from './nanodet';
export type { DSLAssignerOptions, DSLAssignment, NanoDetPlusLossOptions, NanoDetPlusLossInput, NanoDetPlusLossValue } from './nanodet';
export { ContrastiveLoss } from './contrastive';
export type { ContrastiveLossOptions, ContrastiveInput, ContrastiveValue } from './contrastive';
export { CocoDataset } from './data/coco';
export type { CocoOptions } from './data/coco';
export { CsvDataset } from './data/csv';
export type { DetectionDataset, SampleRecord, SampleAnnotation, DataWarning, GroundTruth } from './data/dataset';
export { DataLoader, disposeBatch } from './data/loader';
export type { Batch, LoaderOptions, SkippedSample } from './data/loader';
export { loadImage, imageSize, BadSampleError } from './data/image';
export type { DecodedImage, LoadImageOptions } from './data/image';
export { resizeScale, scaledSize, transformBoxes, cropBoxes, paddedSize, IMAGENET_MEAN, IMAGENET_STD } from './data/transforms';
export type { TransformOptions } from './data/transforms';
export { makeShapes, SHAPE_CLASSES } from './data/shapes';
export type { ShapesOptions, ShapesResult } from './data/shapes';
export { Rng } from './data/random';
export { contrastiveViews } from './data/views';
export { Trainer, resolveReplicas } from './train/trainer';
export type { TrainerOptions, OptimizerOptions, ScheduleOptions, EmaOptions, StepRecord, EpochRecord, FitOptions, FitResult } from './train/trainer';
export type { ProgressMode } from './train/progress';
export { lineChartSvg, writeLineChart } from './train/plots';
export type { Series, ChartOptions } from './train/plots';
export { evaluateCoco, COCO_STAT_NAMES } from './eval/coco_eval';
export type { CocoGroundTruth, CocoDetection, CocoEvalResult } from './eval/coco_eval';
export { evaluateVoc, allPointAp } from './eval/voc_eval';
export type { VocEvalOptions, VocEvalResult } from './eval/voc_eval';
export { evaluateDetector, toCocoResults, formatEvaluation } from './eval/evaluate';
export type { EvaluateOptions, DetectorEvaluation } from './eval/evaluate';
export { writeFileAtomic, writeJsonAtomic } from './io';
export { ProcessGroup, distEnvironment, distBackends } from './distributed';
export type { ProcessGroupOptions, DistEnvironment, DistBackend } from './distributed';
export { launchWorkers } from './jobs/launch';
export type { LaunchOptions, LaunchResult } from './jobs/launch';
