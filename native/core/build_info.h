// What this build of onestage is: its version, the LibTorch it was compiled against, CUDA, libjpeg-turbo.
#pragma once
#include <string>

namespace onestage {

struct BuildInfo {
  std::string version;       // onestage package version compiled in
  std::string torchVersion;  // LibTorch version compiled against, e.g. "1.13.0"
  bool cudaCompiled;         // LibTorch with CUDA support
  bool cudaAvailable;        // and at least one CUDA device usable now
  int deviceCount;           // CUDA devices visible (0 without CUDA)
  std::string jpegDecoder;   // libjpeg-turbo version of the DataLoader's JPEG decoder, empty when built without it
};

BuildInfo buildInfo();

}  // namespace onestage
