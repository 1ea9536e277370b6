#!/usr/bin/env bash
# Sets up everything onestage needs, idempotently; run by `npm test` and `npm run demo` first.
#  1. system packages (LibTorch, PyTorch for the parity references, onnx's checker, Chromium for the
#     web page test, cmake, ninja) when missing,
#     with apt-get when we are root (or have passwordless sudo);
#  2. node_modules (npm ci), which also builds the addon and compiles the TypeScript;
#  3. otherwise an incremental build of the addon and the TypeScript (seconds when nothing changed).
# With --runtime (npm run demo) the PyTorch packages, needed only by the parity tests, are skipped.
set -euo pipefail
runtime=0
[[ "${1:-}" == --runtime ]] && runtime=1
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "setup: $*" >&2; }

torch_found() {
  [[ -n "${ONESTAGE_TORCH_DIR:-}${Torch_DIR:-}${CMAKE_PREFIX_PATH:-}" ]] && return 0
  compgen -G "/usr/lib/*/cmake/Torch/TorchConfig.cmake" >/dev/null && return 0
  local py
  for py in python3 /usr/bin/python3; do
    "$py" -c 'import torch,os,sys; sys.exit(0 if os.path.isdir(os.path.join(torch.utils.cmake_prefix_path,"Torch")) else 1)' 2>/dev/null && return 0
  done
  return 1
}
python_torch_found() {
  local py
  for py in ${ONESTAGE_PYTHON:-} python3 /usr/bin/python3; do
    "$py" -c 'import torch, torchvision' 2>/dev/null && return 0
  done
  return 1
}

missing=()
torch_found || missing+=(libtorch-dev)
# Debian's LibTorch has c10d's Gloo process group; its headers need Gloo's (CPU data-parallel training)
if [[ ! -e /usr/include/gloo/algorithm.h ]] && { [[ " ${missing[*]} " == *" libtorch-dev "* ]] || [[ -e /usr/include/torch/csrc/distributed/c10d/ProcessGroupGloo.hpp ]]; }; then
  missing+=(libgloo-dev)
fi
# Debian's LibTorch takes its BLAS from the libblas.so.3 alternative: the reference BLAS (libblas3) unless
# OpenBLAS is there (libtorch1.13 only recommends it) — matrix products 15× slower on the 2-core VM
ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so\.0' || missing+=(libopenblas0-pthread)
((runtime)) || python_torch_found || missing+=(python3-torch python3-torchvision)
# the ONNX tests: onnx's checker (python3-onnx) and a real browser for the web page (chromium)
if ((!runtime)); then
  for py in ${ONESTAGE_PYTHON:-} python3 /usr/bin/python3; do "$py" -c 'import onnx' 2>/dev/null && break; py=; done
  [[ -n "${py:-}" ]] || missing+=(python3-onnx)
  command -v chromium >/dev/null || [[ -n "${ONESTAGE_CHROMIUM:-}" ]] || missing+=(chromium)
  # Pillow: the JPEG decoder's parity tests (Debian's python3-torchvision brings it)
  for py in ${ONESTAGE_PYTHON:-} python3 /usr/bin/python3; do "$py" -c 'import PIL' 2>/dev/null && break; py=; done
  [[ -n "${py:-}" ]] || missing+=(python3-pil)
fi
# libjpeg-turbo's headers: the DataLoader's JPEG decoder (without them JPEGs go through sharp)
[[ -e /usr/include/jpeglib.h ]] || compgen -G "/usr/include/*/jpeglib.h" >/dev/null || missing+=(libjpeg-dev)
command -v cmake >/dev/null || missing+=(cmake)
command -v ninja >/dev/null || missing+=(ninja-build)
command -v c++ >/dev/null || missing+=(g++)
# text in the plots and the drawn detections is rendered by sharp (librsvg) through fontconfig
compgen -G "/usr/share/fonts/*/*/*.[ot]tf" >/dev/null || compgen -G "/usr/share/fonts/*/*.[ot]tf" >/dev/null || missing+=(fonts-dejavu-core)

if ((${#missing[@]})); then
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo=(sudo -n); else sudo=(none); fi
  fi
  if [[ "${sudo[0]:-}" == none ]] || ! command -v apt-get >/dev/null; then
    say "missing: ${missing[*]}"
    say "install them, e.g. as root on Debian/Ubuntu: apt-get install -y ${missing[*]}"
    say "or point at a LibTorch you have: export ONESTAGE_TORCH_DIR=/path/to/libtorch"
    say "  (or CMAKE_PREFIX_PATH=\$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)'))"
    exit 1
  fi
  say "installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -q
  extra=()
  ((runtime)) || extra=(python3-numpy)
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" "${extra[@]}"
fi

if [[ ! -d node_modules || ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  say "installing node modules (builds the addon)"
  # onnxruntime-node (a dev dependency) would fetch CUDA provider binaries from NuGet at install: never
  ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund
else
  node scripts/build-native.js
  npx --no-install tsc -p tsconfig.build.json
fi
