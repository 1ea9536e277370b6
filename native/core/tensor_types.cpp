#include "core/tensor_types.h"

#include <cmath>
#include <sstream>

#include "core/errors.h"

namespace onestage {

namespace {
struct DtypeEntry {
  const char* name;
  torch::ScalarType type;
};
constexpr DtypeEntry kDtypes[] = {
    {"float32", torch::kFloat32}, {"float64", torch::kFloat64}, {"int64", torch::kInt64},
    {"int32", torch::kInt32},     {"uint8", torch::kUInt8},     {"bool", torch::kBool},
};

std::string dtypeChoices() {
  std::string s;
  for (const auto& e : kDtypes) s += (s.empty() ? "" : ", ") + std::string(e.name);
  return s;
}
}  // namespace

torch::ScalarType parseDtype(const std::string& name, const std::string& what) {
  for (const auto& e : kDtypes)
    if (name == e.name) return e.type;
  throw RangeError("Expected one of " + dtypeChoices() + " for " + what + " but received '" + name + "'");
}

std::string dtypeName(torch::ScalarType type) {
  for (const auto& e : kDtypes)
    if (type == e.type) return e.name;
  throw TypeError(std::string("tensor has dtype ") + c10::toString(type) +
                  ", which onestage does not expose (expected one of " + dtypeChoices() + ")");
}

size_t dtypeSize(torch::ScalarType type) { return c10::elementSize(type); }

torch::Device parseDevice(const std::string& name, const std::string& what) {
  if (name == "cpu") return torch::Device(torch::kCPU);
  if (name == "cuda") return torch::Device(torch::kCUDA, 0);
  if (name.rfind("cuda:", 0) == 0 && name.size() > 5 && name.size() <= 8) {
    const std::string digits = name.substr(5);
    bool ok = true;
    for (char c : digits) ok = ok && c >= '0' && c <= '9';
    if (ok) return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(std::stoi(digits)));
  }
  throw RangeError("Expected 'cpu', 'cuda' or 'cuda:N' for " + what + " but received '" + name + "'");
}

void requireDeviceAvailable(const torch::Device& device) {
  if (device.is_cpu()) return;
  if (!device.is_cuda())
    throw RangeError("device " + device.str() + " is not supported (use 'cpu' or 'cuda')");
#ifndef ONESTAGE_WITH_CUDA
  throw std::runtime_error("CUDA is not available: onestage was built against LibTorch " TORCH_VERSION
                           " without CUDA (rebuild with a CUDA LibTorch on CMAKE_PREFIX_PATH)");
#else
  const auto count = torch::cuda::device_count();
  if (count == 0)
    throw std::runtime_error("CUDA is not available: no CUDA device was found (the build has CUDA support)");
  if (device.index() >= static_cast<int64_t>(count))
    throw RangeError("device " + deviceName(device) + " does not exist: " + std::to_string(count) +
                     " CUDA device(s) found");
#endif
}

std::string deviceName(const torch::Device& device) {
  if (device.is_cpu()) return "cpu";
  return device.str() + (device.has_index() ? "" : ":0");
}

std::string describeShape(at::IntArrayRef shape) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << ']';
  return s.str();
}

std::vector<int64_t> checkShape(const std::vector<double>& dims, const std::string& what) {
  std::vector<int64_t> out;
  out.reserve(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) {
    const double d = dims[i];
    if (!std::isfinite(d) || d < 0 || d != std::floor(d) || d > 9007199254740991.0) {
      std::ostringstream s;
      s << "Expected a non-negative integer for " << what << "[" << i << "] but received " << d;
      throw RangeError(s.str());
    }
    out.push_back(static_cast<int64_t>(d));
  }
  return out;
}

}  // namespace onestage
