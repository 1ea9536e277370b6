// CUDA kernels of the fused contrastive loss (contrastive.cpp): the same definition as its LibTorch-ops
// path, in a handful of launches instead of ~130.
//   prepare:   the RoIs (annotation rows, invalid rows zeroed; each image's background cell) and the
//              level mask, one block per image;
//   normalize: L2 row normalisation (one warp per row) and its backward;
//   rows:      per similarity row (one warp): the negatives mask from the rule, the background
//              fallback, log-sum-exp, the row's term and its softmax-minus-positive coefficients;
//   finish:    the deterministic sum of the terms over the anchor count, and both counts (one block);
//   symmetric: the similarities' gradient (W + Wᵀ) · upstream / (T · count) for one bmm.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>

namespace onestage {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xffffffffu;

unsigned blocksForWarps(int64_t warps) {
  return static_cast<unsigned>((warps + kWarps - 1) / kWarps);
}

__device__ inline float warpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

__device__ inline float warpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

/// One block per image b: rows b·M … b·M + M − 1 of the RoIs (batch index, box; zeros for rows that
/// are not boxes) and of the level mask, then the image's background RoI (row BM + b): the grid cell
/// whose largest intersection with a present row (label ≠ −1), as a fraction of the cell, is smallest,
/// the first in row-major order on ties. Arithmetic in double as the LibTorch path.
__global__ void prepareKernel(const float* __restrict__ ann, const double* __restrict__ cells, int B, int M, int K, int L, bool assigned,
                              int firstLevel, double cellArea, float* __restrict__ rois, uint8_t* __restrict__ onLevel) {
  extern __shared__ double cover[];  // [K]
  const int b = blockIdx.x;
  const int BM = B * M;
  for (int m = threadIdx.x; m < M; m += blockDim.x) {
    const float* row = ann + 5 * (static_cast<int64_t>(b) * M + m);
    const bool valid = row[4] >= 0.f;
    const float x1 = valid ? row[0] : 0.f, y1 = valid ? row[1] : 0.f, x2 = valid ? row[2] : 0.f, y2 = valid ? row[3] : 0.f;
    float* roi = rois + 5 * (static_cast<int64_t>(b) * M + m);
    roi[0] = static_cast<float>(b);
    roi[1] = x1;
    roi[2] = y1;
    roi[3] = x2;
    roi[4] = y2;
    int level = -1;
    if (assigned) {
      const float area = fmaxf(__fmul_rn(x2 - x1, y2 - y1), 1e-12f);
      const double side = sqrt(static_cast<double>(area));
      double k = floor(4.0 + log2(side / 224.0)) - static_cast<double>(firstLevel);
      k = k < 0.0 ? 0.0 : (k > L - 1 ? static_cast<double>(L - 1) : k);
      level = static_cast<int>(k);
    }
    for (int l = 0; l < L; ++l) onLevel[static_cast<int64_t>(l) * BM + b * M + m] = valid && (!assigned || level == l);
  }
  for (int c = threadIdx.x; c < K; c += blockDim.x) {
    const double cx1 = cells[4 * c], cy1 = cells[4 * c + 1], cx2 = cells[4 * c + 2], cy2 = cells[4 * c + 3];
    double most = 0.0;
    for (int m = 0; m < M; ++m) {
      const float* row = ann + 5 * (static_cast<int64_t>(b) * M + m);
      if (row[4] == -1.f) continue;
      const double iw = fmax(fmin(cx2, static_cast<double>(row[2])) - fmax(cx1, static_cast<double>(row[0])), 0.0);
      const double ih = fmax(fmin(cy2, static_cast<double>(row[3])) - fmax(cy1, static_cast<double>(row[1])), 0.0);
      const double iof = __dmul_rn(iw, ih) / cellArea;
      most = iof > most ? iof : most;
    }
    cover[c] = most;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int first = 0;
    for (int c = 1; c < K; ++c)
      if (cover[c] < cover[first]) first = c;
    float* roi = rois + 5 * (static_cast<int64_t>(BM) + b);
    roi[0] = static_cast<float>(b);
    for (int i = 0; i < 4; ++i) roi[1 + i] = static_cast<float>(cells[4 * first + i]);
  }
}

/// One warp per row of x [N, D]: e = x / max(‖x‖, 1e-12), norm[row] = ‖x‖.
__global__ void normalizeKernel(const float* __restrict__ x, int64_t N, int64_t D, float* __restrict__ e, float* __restrict__ norm) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (row >= N) return;
  const float* xr = x + row * D;
  float s = 0.f;
  for (int64_t d = lane; d < D; d += 32) s += xr[d] * xr[d];
  const float n = sqrtf(warpSum(s));
  const float denom = fmaxf(n, 1e-12f);
  float* er = e + row * D;
  for (int64_t d = lane; d < D; d += 32) er[d] = xr[d] / denom;
  if (lane == 0) norm[row] = n;
}

/// The normalisation's backward, one warp per row: ∂x = (∂e − e (e·∂e)) / ‖x‖, or ∂e / 1e-12 where the
/// norm was clamped.
__global__ void normalizeBackwardKernel(const float* __restrict__ de, const float* __restrict__ e, const float* __restrict__ norm, int64_t N,
                                        int64_t D, float* __restrict__ dx) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (row >= N) return;
  const float* der = de + row * D;
  const float* er = e + row * D;
  float* dxr = dx + row * D;
  const float n = norm[row];
  if (!(n >= 1e-12f)) {
    for (int64_t d = lane; d < D; d += 32) dxr[d] = der[d] / 1e-12f;
    return;
  }
  float s = 0.f;
  for (int64_t d = lane; d < D; d += 32) s += er[d] * der[d];
  const float dot = warpSum(s);
  for (int64_t d = lane; d < D; d += 32) dxr[d] = (der[d] - er[d] * dot) / n;
}

struct RowsGeometry {
  int B, M, L;
  int mode;  // 0 other-class, 1 all-other, 2 same-region-other-images
  float invT;
};

/// One warp per similarity row (level l, row r = v·(BM + B) + k of [L, R, R], R = 2(BM + B)).
/// Anchor rows (k < BM on level l) get their term lse − s_pos and coefficients softmax − onehot(pos)
/// over {positive, negatives, background if no negative}; every other row writes zeros.
/// status: 0 not an anchor, 1 anchor, 2 anchor using the background regions.
__global__ void rowsKernel(const float* __restrict__ S, const uint8_t* __restrict__ onLevel, const float* __restrict__ ann, RowsGeometry g,
                           float* __restrict__ W, float* __restrict__ term, uint8_t* __restrict__ status) {
  const int BM = g.B * g.M, H = BM + g.B, R = 2 * H;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (warp >= static_cast<int64_t>(g.L) * R) return;
  const int l = static_cast<int>(warp / R), r = static_cast<int>(warp % R);
  const int v = r / H, k = r % H;
  const float* s = S + warp * R;
  float* w = W + warp * R;
  const uint8_t* on = onLevel + static_cast<int64_t>(l) * BM;
  if (k >= BM || !on[k]) {
    for (int j = lane; j < R; j += 32) w[j] = 0.f;
    if (lane == 0) {
      term[warp] = 0.f;
      status[warp] = 0;
    }
    return;
  }
  const int image = k / g.M, slot = k % g.M;
  const float label = ann[5 * static_cast<int64_t>(k) + 4];
  const int pos = (1 - v) * H + k;
  // may column j (a box row of either view) be a negative of this row?
  auto negative = [&](int j) {
    const int kk = j % H;
    if (kk >= BM || !on[kk]) return false;
    if (g.mode == 0) return static_cast<int64_t>(ann[5 * static_cast<int64_t>(kk) + 4]) != static_cast<int64_t>(label);
    if (g.mode == 1) return kk != k;
    return kk / g.M != image && kk % g.M == slot;
  };
  const float sPos = s[pos] * g.invT;
  float mx = sPos;
  bool any = false;
  for (int j = lane; j < R; j += 32)
    if (negative(j)) {
      any = true;
      mx = fmaxf(mx, s[j] * g.invT);
    }
  const bool lonely = !__any_sync(kFull, any);
  const int bg0 = BM + image, bg1 = H + BM + image;  // the image's background in both views
  if (lonely) mx = fmaxf(mx, fmaxf(s[bg0] * g.invT, s[bg1] * g.invT));
  mx = warpMax(mx);
  auto included = [&](int j) { return j == pos || (lonely ? (j == bg0 || j == bg1) : negative(j)); };
  float sum = 0.f;
  for (int j = lane; j < R; j += 32)
    if (included(j)) sum += expf(s[j] * g.invT - mx);
  sum = warpSum(sum);
  for (int j = lane; j < R; j += 32) {
    float c = included(j) ? expf(s[j] * g.invT - mx) / sum : 0.f;
    if (j == pos) c -= 1.f;
    w[j] = c;
  }
  if (lane == 0) {
    term[warp] = mx + logf(sum) - sPos;
    status[warp] = lonely ? 2 : 1;
  }
}

/// One block: loss = Σ term / max(anchors, 1) (a fixed order: deterministic), counts = {anchors,
/// anchors using the backgrounds}, invCount = 1 / max(anchors, 1) for the backward.
__global__ void finishKernel(const float* __restrict__ term, const uint8_t* __restrict__ status, int64_t n, float* __restrict__ loss,
                             int64_t* __restrict__ counts, float* __restrict__ invCount) {
  __shared__ double sums[kThreads];
  __shared__ long long anchors[kThreads], lonely[kThreads];
  double s = 0.0;
  long long a = 0, b = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    s += term[i];
    a += status[i] != 0;
    b += status[i] == 2;
  }
  sums[threadIdx.x] = s;
  anchors[threadIdx.x] = a;
  lonely[threadIdx.x] = b;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) {
      sums[threadIdx.x] += sums[threadIdx.x + o];
      anchors[threadIdx.x] += anchors[threadIdx.x + o];
      lonely[threadIdx.x] += lonely[threadIdx.x + o];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const float count = static_cast<float>(anchors[0] > 0 ? anchors[0] : 1);
    loss[0] = static_cast<float>(sums[0]) / count;
    counts[0] = anchors[0];
    counts[1] = lonely[0];
    invCount[0] = 1.f / count;
  }
}

/// A[l, i, j] = (W[l, i, j] + W[l, j, i]) · upstream · invCount / T.
__global__ void symmetricKernel(const float* __restrict__ W, const float* __restrict__ upstream, const float* __restrict__ invCount, float invT,
                                int64_t L, int64_t R, float* __restrict__ A) {
  const float scale = upstream[0] * invCount[0] * invT;
  const int64_t total = L * R * R;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t l = i / (R * R), rest = i - l * R * R, a = rest / R, b = rest - a * R;
    A[i] = (W[i] + W[l * R * R + b * R + a]) * scale;
  }
}

}  // namespace

std::pair<at::Tensor, at::Tensor> contrastivePrepareCuda(const at::Tensor& ann, const at::Tensor& cells, int64_t L, bool assigned, int64_t firstLevel,
                                                         double cellArea) {
  const c10::cuda::CUDAGuard guard(ann.device());
  const int64_t B = ann.size(0), M = ann.size(1), K = cells.size(0);
  auto rois = at::empty({B * M + B, 5}, ann.options());
  auto onLevel = at::empty({L, B * M}, ann.options().dtype(at::kByte));
  prepareKernel<<<static_cast<unsigned>(B), kThreads, K * sizeof(double), at::cuda::getCurrentCUDAStream()>>>(
      ann.data_ptr<float>(), cells.data_ptr<double>(), static_cast<int>(B), static_cast<int>(M), static_cast<int>(K), static_cast<int>(L), assigned,
      static_cast<int>(firstLevel), cellArea, rois.data_ptr<float>(), onLevel.data_ptr<uint8_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {rois, onLevel};
}

std::pair<at::Tensor, at::Tensor> contrastiveNormalizeCuda(const at::Tensor& x) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), D = x.size(1);
  auto e = at::empty_like(x);
  auto norm = at::empty({N}, x.options());
  if (N > 0) {
    normalizeKernel<<<blocksForWarps(N), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(x.data_ptr<float>(), N, D, e.data_ptr<float>(),
                                                                                           norm.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {e, norm};
}

at::Tensor contrastiveNormalizeBackwardCuda(const at::Tensor& de, const at::Tensor& e, const at::Tensor& norm) {
  const c10::cuda::CUDAGuard guard(e.device());
  const int64_t N = e.size(0), D = e.size(1);
  auto dx = at::empty_like(e);
  if (N > 0) {
    normalizeBackwardKernel<<<blocksForWarps(N), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        de.data_ptr<float>(), e.data_ptr<float>(), norm.data_ptr<float>(), N, D, dx.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return dx;
}

/// S [L, R, R] cosine similarities → {loss (scalar), counts int64 [2], W [L, R, R], invCount (scalar)}.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrastiveRowsCuda(const at::Tensor& S, const at::Tensor& onLevel, const at::Tensor& ann,
                                                                               int64_t mode, double temperature) {
  const c10::cuda::CUDAGuard guard(S.device());
  const int64_t L = S.size(0), R = S.size(1);
  const int B = static_cast<int>(ann.size(0)), M = static_cast<int>(ann.size(1));
  auto W = at::empty_like(S);
  auto term = at::empty({L * R}, S.options());
  auto status = at::empty({L * R}, S.options().dtype(at::kByte));
  auto loss = at::empty({}, S.options());
  auto counts = at::empty({2}, S.options().dtype(at::kLong));
  auto invCount = at::empty({}, S.options());
  const RowsGeometry g{B, M, static_cast<int>(L), static_cast<int>(mode), static_cast<float>(1.0 / temperature)};
  const auto stream = at::cuda::getCurrentCUDAStream();
  rowsKernel<<<blocksForWarps(L * R), kThreads, 0, stream>>>(S.data_ptr<float>(), onLevel.data_ptr<uint8_t>(), ann.data_ptr<float>(), g,
                                                             W.data_ptr<float>(), term.data_ptr<float>(), status.data_ptr<uint8_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  finishKernel<<<1, kThreads, 0, stream>>>(term.data_ptr<float>(), status.data_ptr<uint8_t>(), L * R, loss.data_ptr<float>(),
                                           counts.data_ptr<int64_t>(), invCount.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {loss, counts, W, invCount};
}

at::Tensor contrastiveSymmetricCuda(const at::Tensor& W, const at::Tensor& upstream, const at::Tensor& invCount, double temperature) {
  const c10::cuda::CUDAGuard guard(W.device());
  const int64_t L = W.size(0), R = W.size(1);
  auto A = at::empty_like(W);
  const int64_t total = A.numel();
  if (total > 0) {
    const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65535);
    symmetricKernel<<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        W.data_ptr<float>(), upstream.data_ptr<float>(), invCount.data_ptr<float>(), static_cast<float>(1.0 / temperature), L, R, A.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return A;
}

}  // namespace onestage
