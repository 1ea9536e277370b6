#include "core/build_info.h"

#include <torch/torch.h>

#include "core/data/jpeg_decode.h"

namespace onestage {

BuildInfo buildInfo() {
  BuildInfo info;
  info.version = ONESTAGE_VERSION;
  info.torchVersion = TORCH_VERSION;
  info.jpegDecoder = jpegDecoderVersion();
#ifdef ONESTAGE_WITH_CUDA
  info.cudaCompiled = true;
  info.deviceCount = static_cast<int>(torch::cuda::device_count());
  info.cudaAvailable = info.deviceCount > 0 && torch::cuda::is_available();
#else
  info.cudaCompiled = false;
  info.deviceCount = 0;
  info.cudaAvailable = false;
#endif
  return info;
}

}  // namespace onestage
