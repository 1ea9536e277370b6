#!/usr/bin/env bash
# Builds onestage on a CUDA machine and runs what needs the GPU, in one go, logs under $OUT (or ./gpu-out):
#   bash scripts/gpu-check.sh [build|tests|bench|all] [test files...]
# build: the addon for this machine's GPU architecture only (about 90 s on 16 cores with the PyTorch 2.11
# LibTorch); tests: build, then the test files that have CUDA cases (or the ones named); bench: build,
# then the loss and training benchmarks; all: build, tests, bench. On the GPU host of this project, start
# with `source .device/env.sh &&` (Node, node_modules and CMAKE_PREFIX_PATH).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
what=${1:-tests}
shift || true
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out"
t0=$(date +%s)
stamp() { echo "gpu-check: $* ($(($(date +%s) - t0)) s)"; }

arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.')
[[ -n "$arch" ]] || { echo "gpu-check: no NVIDIA GPU found (nvidia-smi)" >&2; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

# libjpeg-turbo for the JPEG decoder: the system's, or Debian's packages carried in $ONESTAGE_JPEG_DEBS
# (default .device/jpeg: `apt-get download libjpeg62-turbo-dev libjpeg62-turbo` there), unpacked beside
# them and linked as a shared library (the addon's build rpath finds it; Debian's libjpeg.a is not
# position-independent); without either, sharp decodes JPEGs
jpeg=()
debs=${ONESTAGE_JPEG_DEBS:-.device/jpeg}
if ! compgen -G "/usr/include/jpeglib.h" >/dev/null && compgen -G "$debs/libjpeg*-dev*.deb" >/dev/null; then
  root=$(cd "$debs" && pwd)/root
  for d in "$debs"/*.deb; do dpkg -x "$d" "$root"; done
  multi=$(dirname "$(find "$root/usr/include" -name jconfig.h | head -1)")
  export CPATH="$root/usr/include:$multi${CPATH:+:$CPATH}"
  jpeg=("--CDJPEG_INCLUDE_DIR=$root/usr/include" "--CDJPEG_LIBRARY=$(find "$root" -name 'libjpeg.so.62' | head -1)")
  stamp "libjpeg from $debs"
fi
npx cmake-js build --parallel "$(nproc)" --log-level warn "--CDONESTAGE_CUDA_ARCHITECTURES=$arch" "${jpeg[@]}" >"$out/build.log" 2>&1
rc=$?
stamp "build rc=$rc (sm_$arch)"
if [[ $rc -ne 0 ]]; then tail -40 "$out/build.log"; exit $rc; fi
# the CLI tests run bin/onestage.js, which loads the compiled dist/
npx tsc -p tsconfig.build.json >>"$out/build.log" 2>&1 || { echo "gpu-check: tsc failed"; tail -20 "$out/build.log"; exit 1; }
[[ "$what" == build ]] && exit 0

status=0
if [[ "$what" == tests || "$what" == all ]]; then
  files=("$@")
  ((${#files[@]})) || mapfile -t files < <(grep -l -E "cudaAvailable|'cuda'" test/*.test.ts)
  npx ava --tap "${files[@]}" >"$out/tests.tap" 2>&1
  rc=$?
  stamp "tests rc=$rc: ${files[*]}"
  grep -E '^(not ok|# (tests|pass|skip|fail))' "$out/tests.tap"
  ((rc == 0)) || status=$rc
fi
if [[ "$what" == bench || "$what" == all ]]; then
  npx ts-node --transpile-only bench/losses.ts --device cuda >"$out/losses.txt" 2>"$out/losses.err"
  stamp "losses benchmark rc=$?"
  cat "$out/losses.txt"
  npx ts-node --transpile-only bench/train_throughput.ts --device cuda >"$out/train.txt" 2>"$out/train.err"
  stamp "training benchmark rc=$?"
  tail -30 "$out/train.txt"
fi
exit $status
