#include "core/weights.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "core/errors.h"
#include "core/tensor_types.h"

namespace onestage {

namespace {

torch::ScalarType safetensorsType(const std::string& s, const std::string& name) {
  static const std::map<std::string, torch::ScalarType> types{
      {"F32", torch::kFloat32}, {"F64", torch::kFloat64}, {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16},
      {"I64", torch::kInt64},   {"I32", torch::kInt32},   {"I16", torch::kInt16},   {"I8", torch::kInt8},
      {"U8", torch::kUInt8},    {"BOOL", torch::kBool}};
  auto it = types.find(s);
  if (it == types.end()) throw RangeError("safetensors tensor '" + name + "' has unsupported dtype " + s);
  return it->second;
}

std::string safetensorsName(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return "F32";
    case torch::kFloat64: return "F64";
    case torch::kFloat16: return "F16";
    case torch::kBFloat16: return "BF16";
    case torch::kInt64: return "I64";
    case torch::kInt32: return "I32";
    case torch::kInt16: return "I16";
    case torch::kInt8: return "I8";
    case torch::kUInt8: return "U8";
    case torch::kBool: return "BOOL";
    default: throw TypeError(std::string("cannot write dtype ") + c10::toString(t) + " to safetensors");
  }
}

std::string jsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

void writeAll(int fd, const void* data, size_t size, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
}

std::string listed(const std::vector<std::string>& names) {
  std::string s;
  const size_t shown = std::min<size_t>(names.size(), 12);
  for (size_t i = 0; i < shown; ++i) s += (i ? ", " : "") + names[i];
  if (names.size() > shown) s += ", … (" + std::to_string(names.size()) + " in all)";
  return s;
}

}  // namespace

NamedTensors readSafetensors(const std::string& path, int64_t dataStart, const std::vector<SafetensorsEntry>& entries) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  const int64_t fileSize = static_cast<int64_t>(in.tellg());
  NamedTensors out;
  for (const auto& e : entries) {
    const auto type = safetensorsType(e.dtype, e.name);
    int64_t numel = 1;
    for (auto d : e.shape) numel *= d;
    const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(type));
    if (e.end - e.begin != bytes || e.begin < 0)
      throw RangeError(path + ": tensor '" + e.name + "' has " + std::to_string(e.end - e.begin) + " bytes but shape " +
                       describeShape(e.shape) + " of " + e.dtype + " needs " + std::to_string(bytes));
    if (dataStart + e.end > fileSize)
      throw RangeError(path + " is truncated: tensor '" + e.name + "' ends at byte " + std::to_string(dataStart + e.end) +
                       " but the file has " + std::to_string(fileSize));
    auto t = torch::empty(e.shape, torch::TensorOptions().dtype(type));
    in.seekg(dataStart + e.begin);
    if (bytes > 0 && !in.read(static_cast<char*>(t.data_ptr()), bytes))
      throw std::runtime_error("cannot read tensor '" + e.name + "' from " + path);
    out.emplace_back(e.name, t);
  }
  return out;
}

void writeSafetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<torch::Tensor> cpu;
  std::ostringstream header;
  header << '{';
  if (!metadata.empty()) {
    header << "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      header << (first ? "" : ",") << jsonString(k) << ':' << jsonString(v);
      first = false;
    }
    header << "},";
  }
  int64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto t = tensors[i].second.detach().to(torch::kCPU).contiguous();
    const int64_t bytes = static_cast<int64_t>(t.nbytes());
    header << (i ? "," : "") << jsonString(tensors[i].first) << ":{\"dtype\":\"" << safetensorsName(t.scalar_type())
           << "\",\"shape\":[";
    for (int64_t d = 0; d < t.dim(); ++d) header << (d ? "," : "") << t.size(d);
    header << "],\"data_offsets\":[" << offset << ',' << offset + bytes << "]}";
    offset += bytes;
    cpu.push_back(t);
  }
  header << '}';
  std::string h = header.str();
  while (h.size() % 8 != 0) h += ' ';
  const uint64_t headerSize = h.size();

  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  std::random_device rd;
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(rd());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot create " + tmp + ": " + std::strerror(errno));
  try {
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((headerSize >> (8 * i)) & 0xff);
    writeAll(fd, len, 8, tmp);
    writeAll(fd, h.data(), h.size(), tmp);
    for (const auto& t : cpu) writeAll(fd, t.data_ptr(), t.nbytes(), tmp);
    if (::fsync(fd) != 0) throw std::runtime_error("cannot sync " + tmp + ": " + std::strerror(errno));
    if (::close(fd) != 0) throw std::runtime_error("cannot close " + tmp + ": " + std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string err = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw std::runtime_error("cannot rename " + tmp + " to " + path + ": " + err);
  }
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

NamedTensors stateDict(const torch::nn::Module& module) {
  NamedTensors out;
  for (const auto& p : module.named_parameters(true)) out.emplace_back(p.key(), p.value());
  for (const auto& b : module.named_buffers(true)) out.emplace_back(b.key(), b.value());
  return out;
}

LoadReport loadStateDict(torch::nn::Module& module, NamedTensors file, const LoadOptions& options) {
  // DataParallel checkpoints: every key starts with "module."
  if (!file.empty() && std::all_of(file.begin(), file.end(), [](const auto& kv) { return kv.first.rfind("module.", 0) == 0; }))
    for (auto& kv : file) kv.first = kv.first.substr(7);
  if (!options.stripPrefix.empty()) {
    NamedTensors kept;
    for (auto& kv : file)
      if (kv.first.rfind(options.stripPrefix, 0) == 0) kept.emplace_back(kv.first.substr(options.stripPrefix.size()), kv.second);
    file = std::move(kept);
  }
  if (options.fileKey)
    for (auto& kv : file) kv.first = options.fileKey(kv.first);
  const auto shown = [&](const std::string& k) { return options.displayKey ? options.displayKey(k) : k; };
  std::map<std::string, torch::Tensor> fromFile(file.begin(), file.end());
  const auto own = stateDict(module);
  LoadReport report;
  std::set<std::string> ownNames;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> copies;
  for (const auto& [name, target] : own) {
    if (options.keyFilter && !options.keyFilter(name)) continue;
    ownNames.insert(name);
    auto it = fromFile.find(name);
    if (it == fromFile.end()) {
      // FrozenBatchNorm2d checkpoints (torchvision's detection weights) have no batch counter
      const std::string counter = "num_batches_tracked";
      if (name.size() > counter.size() && name.compare(name.size() - counter.size(), counter.size(), counter) == 0) continue;
      report.missing.push_back(shown(name));
      continue;
    }
    if (it->second.sizes() != target.sizes()) {
      if (options.finetune && options.classifierKey && options.classifierKey(name)) {
        report.reinitialized.push_back(shown(name));
        continue;
      }
      report.mismatched.push_back(shown(name) + ": file " + describeShape(it->second.sizes()) + " vs model " +
                                  describeShape(target.sizes()));
      continue;
    }
    copies.emplace_back(target, it->second);
  }
  for (const auto& kv : file) {
    if (options.keyFilter && !options.keyFilter(kv.first)) continue;  // outside the part being loaded
    if (!ownNames.count(kv.first)) report.unexpected.push_back(shown(kv.first));
  }
  if (options.strict && (!report.missing.empty() || !report.unexpected.empty() || !report.mismatched.empty())) {
    std::string msg = "weights do not match the model (nothing was loaded; pass strict: false to load what fits):";
    if (!report.missing.empty()) msg += "\n  missing: " + listed(report.missing);
    if (!report.unexpected.empty()) msg += "\n  unexpected: " + listed(report.unexpected);
    if (!report.mismatched.empty()) msg += "\n  wrong shape: " + listed(report.mismatched);
    bool classifier = false;
    if (options.classifierKey)
      for (const auto& [name, target] : own) {
        auto it = fromFile.find(name);
        if (options.classifierKey(name) && it != fromFile.end() && it->second.sizes() != target.sizes()) classifier = true;
      }
    if (classifier)
      msg += "\n  the classification output layer was trained for another number of classes: to fine-tune to this model's classes, "
             "load with { finetune: true } (CLI: train --weights FILE --finetune); that layer is then re-initialised with the prior";
    throw std::runtime_error(msg);
  }
  torch::NoGradGuard noGrad;
  for (auto& [target, source] : copies) target.copy_(source.to(target.device(), target.scalar_type()));
  report.loaded = static_cast<int64_t>(copies.size());
  return report;
}

}  // namespace onestage
