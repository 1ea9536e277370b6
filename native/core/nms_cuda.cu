// CUDA NMS for a padded batch of boxes sorted by descending score (see nms.h).
//   1. maskKernel: for every image and every 64×64 tile (row block ≤ column block) of box pairs,
//      one thread per row box writes a 64-bit word: bit c set when column box c (> row) has the same
//      group and IoU > threshold.
//   2. scanKernel: one block per image walks the boxes a word (64 boxes) at a time: thread 0 decides
//      the word's boxes sequentially against the running "removed" bits, then all threads OR the
//      masks of the boxes just kept into the later words. One sync per 64 boxes; no host round trip.
// IoU as the CPU path: inter / (areaA + areaB − inter) with areas of clamped sizes.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>

namespace onestage {

namespace {

constexpr int kWord = 64;

__device__ inline bool suppresses(const float* a, const float* b, double thr) {
  const float w = fminf(a[2], b[2]) - fmaxf(a[0], b[0]);
  if (w <= 0.f) return false;
  const float h = fminf(a[3], b[3]) - fmaxf(a[1], b[1]);
  if (h <= 0.f) return false;
  const float inter = w * h;
  const float areaA = fmaxf(a[2] - a[0], 0.f) * fmaxf(a[3] - a[1], 0.f);
  const float areaB = fmaxf(b[2] - b[0], 0.f) * fmaxf(b[3] - b[1], 0.f);
  const float uni = areaA + areaB - inter;
  return uni > 0.f && static_cast<double>(inter / uni) > thr;
}

__global__ void maskKernel(const float* __restrict__ boxes, const int64_t* __restrict__ groups,
                           const int64_t* __restrict__ count, int64_t K, int64_t words, double thr,
                           unsigned long long* __restrict__ mask) {
  const int64_t b = blockIdx.z;
  const int64_t rowBlock = blockIdx.y, colBlock = blockIdx.x;
  if (colBlock < rowBlock) return;  // never read by the scan
  const int64_t n = count[b];
  const int64_t rowStart = rowBlock * kWord, colStart = colBlock * kWord;
  if (rowStart >= n) return;
  __shared__ float colBoxes[kWord * 4];
  __shared__ int64_t colGroups[kWord];
  const int64_t cols = n - colStart < kWord ? n - colStart : kWord;
  const float* bb = boxes + b * K * 4;
  const int64_t* gg = groups + b * K;
  if (threadIdx.x < cols) {
    for (int k = 0; k < 4; ++k) colBoxes[threadIdx.x * 4 + k] = bb[(colStart + threadIdx.x) * 4 + k];
    colGroups[threadIdx.x] = gg[colStart + threadIdx.x];
  }
  __syncthreads();
  const int64_t row = rowStart + threadIdx.x;
  if (row >= n) return;
  float rowBox[4];
  for (int k = 0; k < 4; ++k) rowBox[k] = bb[row * 4 + k];
  const int64_t rowGroup = gg[row];
  unsigned long long bits = 0;
  for (int64_t c = 0; c < cols; ++c) {
    const int64_t col = colStart + c;
    if (col <= row || colGroups[c] != rowGroup) continue;
    if (suppresses(rowBox, colBoxes + c * 4, thr)) bits |= 1ULL << c;
  }
  mask[(b * K + row) * words + colBlock] = bits;
}

__global__ void scanKernel(const unsigned long long* __restrict__ mask, const int64_t* __restrict__ count, int64_t K,
                           int64_t words, unsigned long long* __restrict__ removed, bool* __restrict__ keep) {
  const int64_t b = blockIdx.x;
  const int64_t n = count[b];
  const int64_t usedWords = (n + kWord - 1) / kWord;
  unsigned long long* rem = removed + b * words;
  const unsigned long long* m = mask + b * K * words;
  bool* kp = keep + b * K;
  __shared__ int64_t kept[kWord];
  __shared__ int keptCount;
  for (int64_t j = threadIdx.x; j < usedWords; j += blockDim.x) rem[j] = 0;
  __syncthreads();
  for (int64_t w = 0; w < usedWords; ++w) {
    if (threadIdx.x == 0) {
      unsigned long long cur = rem[w];
      int nk = 0;
      for (int bit = 0; bit < kWord; ++bit) {
        const int64_t i = w * kWord + bit;
        if (i >= n) break;
        if (!((cur >> bit) & 1ULL)) {
          kp[i] = true;
          cur |= m[i * words + w];
          kept[nk++] = i;
        }
      }
      keptCount = nk;
    }
    __syncthreads();
    for (int64_t j = w + 1 + threadIdx.x; j < usedWords; j += blockDim.x) {
      unsigned long long acc = rem[j];
      for (int k = 0; k < keptCount; ++k) acc |= m[kept[k] * words + j];
      rem[j] = acc;
    }
    __syncthreads();
  }
}

}  // namespace

at::Tensor sortedBatchNmsCuda(const at::Tensor& boxesIn, const at::Tensor& groupsIn, const at::Tensor& countIn,
                              double iouThreshold) {
  const c10::cuda::CUDAGuard guard(boxesIn.device());
  const auto boxes = boxesIn.to(at::kFloat).contiguous();
  const auto groups = groupsIn.to(at::kLong).contiguous();
  const auto count = countIn.to(boxes.device(), at::kLong).contiguous();
  const int64_t B = boxes.size(0), K = boxes.size(1);
  const int64_t words = (K + kWord - 1) / kWord;
  auto keep = at::zeros({B, K}, boxes.options().dtype(at::kBool));
  if (B == 0 || K == 0) return keep;
  auto mask = at::empty({B, K, words}, boxes.options().dtype(at::kLong));
  auto removed = at::empty({B, words}, boxes.options().dtype(at::kLong));
  auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(words), static_cast<unsigned>(words), static_cast<unsigned>(B));
  maskKernel<<<grid, kWord, 0, stream>>>(boxes.data_ptr<float>(), groups.data_ptr<int64_t>(), count.data_ptr<int64_t>(), K,
                                         words, iouThreshold,
                                         reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  scanKernel<<<static_cast<unsigned>(B), 256, 0, stream>>>(
      reinterpret_cast<const unsigned long long*>(mask.data_ptr<int64_t>()), count.data_ptr<int64_t>(), K, words,
      reinterpret_cast<unsigned long long*>(removed.data_ptr<int64_t>()), keep.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return keep;
}

}  // namespace onestage
