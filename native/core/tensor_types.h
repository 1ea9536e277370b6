// Names of dtypes and devices as the public API spells them ("float32", "cuda:0"), parsing and
// validation. Errors name the argument (`what`) and the value received.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

namespace onestage {

/// "float32" | "float64" | "int64" | "int32" | "uint8" | "bool" → ScalarType; RangeError otherwise.
torch::ScalarType parseDtype(const std::string& name, const std::string& what = "dtype");
/// ScalarType → the public name; TypeError for dtypes onestage does not expose (e.g. float16).
std::string dtypeName(torch::ScalarType type);
/// Size in bytes of one element of an exposed dtype.
size_t dtypeSize(torch::ScalarType type);

/// "cpu" | "cuda" | "cuda:N" → Device. RangeError for other strings. Does not check availability.
torch::Device parseDevice(const std::string& name, const std::string& what = "device");
/// Throws a plain error if `device` cannot be used in this process: CUDA not compiled in,
/// no CUDA device, or an index past the device count (RangeError).
void requireDeviceAvailable(const torch::Device& device);
/// "cpu" or "cuda:N".
std::string deviceName(const torch::Device& device);

/// "[2, 3, 4]"
std::string describeShape(at::IntArrayRef shape);

/// Shape from JavaScript numbers: each a non-negative integer; RangeError naming `what` otherwise.
std::vector<int64_t> checkShape(const std::vector<double>& dims, const std::string& what = "shape");

}  // namespace onestage
