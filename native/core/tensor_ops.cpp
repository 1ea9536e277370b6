#include "core/tensor_ops.h"

#include <cstring>

#include "core/errors.h"
#include "core/tensor_types.h"

namespace onestage {

namespace {

void requireSameDeviceAndDtype(const torch::Tensor& a, const torch::Tensor& b, const std::string& op) {
  if (a.device() != b.device())
    throw TypeError(op + ": tensors are on different devices (" + deviceName(a.device()) + " and " +
                    deviceName(b.device()) + ")");
  if (a.scalar_type() != b.scalar_type())
    throw TypeError(op + ": tensors have different dtypes (" + dtypeName(a.scalar_type()) + " and " +
                    dtypeName(b.scalar_type()) + ")");
}

void requireFloating(const torch::Tensor& t, const std::string& op) {
  if (!t.is_floating_point())
    throw TypeError(op + ": expected a float32 or float64 tensor but received " + dtypeName(t.scalar_type()));
}

int64_t normaliseDim(int64_t dim, int64_t ndim, const std::string& op) {
  if (ndim == 0 || dim < -ndim || dim >= ndim)
    throw RangeError(op + ": dim " + std::to_string(dim) + " is out of range for a tensor with " +
                     std::to_string(ndim) + " dimension(s)");
  return dim < 0 ? dim + ndim : dim;
}

}  // namespace

torch::Tensor tensorFromBytes(const void* bytes, size_t byteLength, const std::vector<int64_t>& shape,
                              torch::ScalarType dtype, const torch::Device& device) {
  int64_t numel = 1;
  for (int64_t d : shape) {
    if (d != 0 && numel > std::numeric_limits<int64_t>::max() / d)
      throw RangeError("shape " + describeShape(shape) + " has too many elements");
    numel *= d;
  }
  const size_t expected = static_cast<size_t>(numel) * dtypeSize(dtype);
  if (expected != byteLength)
    throw RangeError("shape " + describeShape(shape) + " holds " + std::to_string(numel) + " elements of " +
                     dtypeName(dtype) + " (" + std::to_string(expected) + " bytes) but the data has " +
                     std::to_string(byteLength) + " bytes");
  requireDeviceAvailable(device);
  auto t = torch::empty(shape, torch::TensorOptions().dtype(dtype));
  if (byteLength > 0) std::memcpy(t.data_ptr(), bytes, byteLength);
  return device.is_cpu() ? t : t.to(device);
}

torch::Tensor contiguousCpu(const torch::Tensor& t) {
  return t.detach().to(torch::kCPU).contiguous();
}

torch::Tensor matmul(const torch::Tensor& a, const torch::Tensor& b) {
  requireSameDeviceAndDtype(a, b, "matmul");
  requireFloating(a, "matmul");
  if (a.dim() < 1 || b.dim() < 1)
    throw RangeError("matmul: both tensors need at least one dimension (received " + describeShape(a.sizes()) +
                     " and " + describeShape(b.sizes()) + ")");
  const int64_t k1 = a.size(-1);
  const int64_t k2 = b.dim() == 1 ? b.size(0) : b.size(-2);
  if (k1 != k2)
    throw RangeError("matmul: shapes " + describeShape(a.sizes()) + " and " + describeShape(b.sizes()) +
                     " cannot be multiplied (" + std::to_string(k1) + " ≠ " + std::to_string(k2) + ")");
  const c10::DeviceGuard guard(a.device());  // worker threads start without a current CUDA device
  return torch::matmul(a, b);
}

torch::Tensor unaryOp(const std::string& op, const torch::Tensor& t) {
  if (op == "neg" || op == "abs") {
    if (t.scalar_type() == torch::kBool) throw TypeError(op + ": not defined for bool tensors");
    return op == "neg" ? torch::neg(t) : torch::abs(t);
  }
  if (op == "relu") {
    if (t.scalar_type() == torch::kBool) throw TypeError("relu: not defined for bool tensors");
    return torch::relu(t);
  }
  if (op == "channelsLast") {
    if (t.dim() != 4) throw RangeError("channelsLast: needs a 4-d tensor [N, C, H, W], received " + describeShape(t.sizes()));
    return t.contiguous(at::MemoryFormat::ChannelsLast);
  }
  requireFloating(t, op);
  if (op == "sigmoid") return torch::sigmoid(t);
  if (op == "exp") return torch::exp(t);
  if (op == "log") return torch::log(t);
  if (op == "sqrt") return torch::sqrt(t);
  if (op == "tanh") return torch::tanh(t);
  throw RangeError("Expected one of sigmoid, exp, log, relu, neg, abs, sqrt, tanh, channelsLast for op but received '" + op + "'");
}

torch::Tensor binaryOp(const std::string& op, const torch::Tensor& a, const torch::Tensor& b) {
  requireSameDeviceAndDtype(a, b, op);
  // broadcasting check with a readable message instead of LibTorch's
  const int64_t n = std::max(a.dim(), b.dim());
  for (int64_t i = 1; i <= n; ++i) {
    const int64_t da = i <= a.dim() ? a.size(-i) : 1;
    const int64_t db = i <= b.dim() ? b.size(-i) : 1;
    if (da != db && da != 1 && db != 1)
      throw RangeError(op + ": shapes " + describeShape(a.sizes()) + " and " + describeShape(b.sizes()) +
                       " do not broadcast");
  }
  if (a.scalar_type() == torch::kBool) throw TypeError(op + ": not defined for bool tensors");
  if (op == "add") return torch::add(a, b);
  if (op == "sub") return torch::sub(a, b);
  if (op == "mul") return torch::mul(a, b);
  if (op == "div") return torch::div(a, b);
  if (op == "maximum") return torch::maximum(a, b);
  if (op == "minimum") return torch::minimum(a, b);
  throw RangeError("Expected one of add, sub, mul, div, maximum, minimum for op but received '" + op + "'");
}

torch::Tensor softmaxOp(const std::string& op, const torch::Tensor& t, int64_t dim) {
  if (op != "softmax" && op != "logSoftmax")
    throw RangeError("Expected 'softmax' or 'logSoftmax' for op but received '" + op + "'");
  requireFloating(t, op);
  const int64_t d = normaliseDim(dim, t.dim(), op);
  return op == "softmax" ? torch::softmax(t, d) : torch::log_softmax(t, d);
}

torch::Tensor sumOp(const torch::Tensor& t, const std::vector<int64_t>& dims) {
  if (dims.empty()) return t.sum();
  std::vector<int64_t> norm;
  for (int64_t d : dims) {
    const int64_t nd = normaliseDim(d, t.dim(), "sum");
    if (std::find(norm.begin(), norm.end(), nd) != norm.end())
      throw RangeError("sum: dim " + std::to_string(d) + " appears more than once");
    norm.push_back(nd);
  }
  return t.sum(norm);
}

}  // namespace onestage
