// Tensor creation, copy-out and a small set of validated elementwise and linear-algebra ops.
// These prove the binding and the parity harness; the detector code uses LibTorch directly.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

namespace onestage {

/// A new tensor owning a copy of `bytes` (`byteLength` bytes, element type `dtype`, C order),
/// reshaped to `shape` and moved to `device`. RangeError when numel(shape)·size(dtype) ≠ byteLength.
torch::Tensor tensorFromBytes(const void* bytes, size_t byteLength, const std::vector<int64_t>& shape,
                              torch::ScalarType dtype, const torch::Device& device);

/// Contiguous CPU copy (or the tensor itself when it already is one), detached from autograd.
torch::Tensor contiguousCpu(const torch::Tensor& t);

/// Batched matrix product with numpy/torch broadcasting; a,b: [..., n, k] × [..., k, m], floating
/// dtype, same dtype and device. Error messages name the shapes.
torch::Tensor matmul(const torch::Tensor& a, const torch::Tensor& b);

/// Elementwise op by name: "sigmoid" | "exp" | "log" | "relu" | "neg" | "abs" | "sqrt" | "tanh".
torch::Tensor unaryOp(const std::string& op, const torch::Tensor& t);

/// Broadcasting elementwise op by name: "add" | "sub" | "mul" | "div" | "maximum" | "minimum".
torch::Tensor binaryOp(const std::string& op, const torch::Tensor& a, const torch::Tensor& b);

/// Softmax or log-softmax ("softmax" | "logSoftmax") along `dim` (negative counts from the end).
torch::Tensor softmaxOp(const std::string& op, const torch::Tensor& t, int64_t dim);

/// Sum over `dims` (all when empty), keepdim false.
torch::Tensor sumOp(const torch::Tensor& t, const std::vector<int64_t>& dims);

}  // namespace onestage
