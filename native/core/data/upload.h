// Host-to-device transfer of a batch, off the training stream.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <vector>

namespace onestage {

/// CPU tensors (any dtype) → the same tensors on `device`. On CUDA the bytes go through page-locked
/// memory (tensors already pinned are used as they are) on a copy stream of their own, so the transfer
/// overlaps the kernels queued on the training streams; the call returns once the copies are complete
/// (the calling thread waits, not the GPU). The results are marked as in use by the device's default
/// stream, where the trainer's step starts, so their memory is not handed out again before that
/// stream's work reaches them. On the CPU (or another device) an ordinary copy.
/// then: applied to each tensor once on `device` (on CUDA on the copy stream, inside the wait, so the
/// caller gets its result; e.g. the images' normalisation after a uint8 upload).
std::vector<torch::Tensor> uploadTensors(const std::vector<torch::Tensor>& host, const torch::Device& device,
                                         const std::function<torch::Tensor(const torch::Tensor&)>& then = {});

/// Empty CPU tensor options for a batch headed to `device`: page-locked on CUDA (the upload then skips
/// its staging copy), ordinary otherwise.
torch::TensorOptions stagingOptions(const torch::Device& device, torch::ScalarType dtype);

}  // namespace onestage
