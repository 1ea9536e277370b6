// What this build of onestage is: its version, the LibTorch it was compiled against, and CUDA.
#pragma once
#include <string>

namespace onestage {

struct BuildInfo {
  std::string version;       // onestage package version compiled in
  std::string torchVersion;  // LibTorch version compiled against, e.g. "1.13.0"
  bool cudaCompiled;         // LibTorch with CUDA support
  bool cudaAvailable;        // and at least one CUDA device usable now
  int deviceCount;           // CUDA devices visible (0 without CUDA)
};

BuildInfo buildInfo();

}  // namespace onestage
