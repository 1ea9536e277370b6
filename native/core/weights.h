// Weights interchange with PyTorch: torch.save'd state_dicts (.pt/.pth zip files, read with a
// restricted unpickler: no code from the file runs), safetensors (read and atomic
// write), and loading a name → tensor map into a module with a report of what did not fit.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace onestage {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

/// Tensors of a torch.save'd dict (a state_dict, or a dict holding one under 'state_dict' or
/// 'model'), read by a restricted unpickler that runs no code from the file (torch_pickle.cpp).
/// Error naming the file when it is not a zip-format torch file or holds anything but tensors.
NamedTensors readTorchStateDict(const std::string& path);

/// One tensor of a safetensors file, as its JSON header says (parsed by the caller).
struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // "F32", "F64", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"
  std::vector<int64_t> shape;
  int64_t begin = 0, end = 0;  // byte offsets from dataStart
};
/// Reads the tensors of a safetensors file whose data section starts at byte `dataStart`.
NamedTensors readSafetensors(const std::string& path, int64_t dataStart, const std::vector<SafetensorsEntry>& entries);

/// Writes a safetensors file (little-endian, header padded to 8 bytes) atomically: a temporary file
/// in the same folder, fsync, rename, fsync of the folder. A crash leaves the old file intact.
void writeSafetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata);

/// Parameters then buffers of `module`, with state_dict names.
NamedTensors stateDict(const torch::nn::Module& module);

struct LoadOptions {
  bool strict = true;
  /// Only keys starting with this prefix are read from the file, without it (e.g. "backbone.body.").
  std::string stripPrefix;
  /// Only the module's keys for which this returns true are loaded and required; file keys outside
  /// it are ignored (backbone-only loading). Empty: every key.
  std::function<bool(const std::string&)> keyFilter;
  /// File key → the module's key (after prefix stripping), e.g. torchvision names → onestage's; empty: same.
  std::function<std::string(const std::string&)> fileKey;
  /// The module's key → the name reports and errors use (the inverse of fileKey); empty: same.
  std::function<std::string(const std::string&)> displayKey;
  /// Keys of the classification output layer (whose shape depends on the class count).
  std::function<bool(const std::string&)> classifierKey;
  /// A classification output layer of another shape is skipped (re-initialised by the caller) instead of an error.
  bool finetune = false;
};
struct LoadReport {
  std::vector<std::string> missing;     // in the module, not in the file
  std::vector<std::string> unexpected;  // in the file, not in the module
  std::vector<std::string> mismatched;  // "name: file [a, b] vs model [c, d]"
  std::vector<std::string> reinitialized;  // classification output layer of another class count (finetune)
  int64_t loaded = 0;
};
/// Copies matching tensors into `module` (converting dtype and device). strict: any missing,
/// unexpected or mismatched key is an error listing them, and nothing is modified. A "module."
/// prefix on every file key (DataParallel checkpoints) is removed.
LoadReport loadStateDict(torch::nn::Module& module, NamedTensors file, const LoadOptions& options);

}  // namespace onestage
