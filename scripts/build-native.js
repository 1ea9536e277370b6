#!/usr/bin/env node
// Builds the native addon (build/Release/onestage.node) with cmake-js, offline, using every core.
// Run by `npm install`; LibTorch is found as CMakeLists.txt describes.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const cmakeJs = require.resolve('cmake-js/bin/cmake-js', { paths: [root] });
const jobs = String(process.env.ONESTAGE_BUILD_JOBS || os.availableParallelism());
const args = [cmakeJs, 'build', '--parallel', jobs, '--log-level', 'warn'];
if (process.env.ONESTAGE_DEBUG_BUILD) args.push('--debug');

// A configure that failed (LibTorch missing at the first `npm install`) leaves a CMakeCache.txt without
// build files; cmake-js then skips the configure step and the build stops with "loading 'build.ninja'".
const build = path.join(root, 'build');
if (fs.existsSync(path.join(build, 'CMakeCache.txt')) && !['build.ninja', 'Makefile'].some((f) => fs.existsSync(path.join(build, f)))) {
  fs.rmSync(path.join(build, 'CMakeCache.txt'));
}

const result = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
if (result.status !== 0) {
  console.error(
    '\nonestage: the native build failed. It needs a C++17 compiler, cmake >= 3.18 and LibTorch.\n' +
      '  Debian/Ubuntu, as root: bash scripts/setup.sh   (installs libtorch-dev and the rest)\n' +
      '  Another LibTorch: ONESTAGE_TORCH_DIR=/path/to/libtorch npm install\n' +
      '  A PyTorch install: CMAKE_PREFIX_PATH=$(python3 -c "import torch;print(torch.utils.cmake_prefix_path)") npm install',
  );
  process.exit(result.status || 1);
}
