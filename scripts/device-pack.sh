#!/usr/bin/env bash
# Prepares .device/ for the GPU host (see bench/gpu_plan.sh): the shared pack (Node, npm, node_modules),
# node_modules again without what the GPU calls never load and that would take the carry over its 64 MiB
# (onnxruntime-node/-web: ~440 MB unpacked, playwright-core), and Debian's libjpeg-turbo packages for the
# JPEG decoder (scripts/gpu-check.sh unpacks them there). Run from the project root after npm install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash ../shared/device/pack.sh
tar cf - --exclude=node_modules/onnxruntime-node --exclude=node_modules/onnxruntime-web --exclude=node_modules/playwright-core \
  node_modules | xz -T0 -6 >.device/node_modules.tar.xz
mkdir -p .device/jpeg
(cd .device/jpeg && apt-get download libjpeg62-turbo-dev libjpeg62-turbo)
du -sh .device | awk '{print "device-pack: .device is " $1 " (the carry limit is 64 MiB with the working tree)"}'
