#!/bin/bash
set -x
mkdir -p $OUT
nvidia-smi --query-gpu=name,memory.total --format=csv > $OUT/gpu.txt
( time node scripts/build-native.js ) > $OUT/build.log 2>&1 || { tail -60 $OUT/build.log; exit 1; }
tail -3 $OUT/build.log
node -e "console.log(require('./dist/index.js').buildInfo ? '' : '')" 2>/dev/null
timeout 240 npx ava test/losses.test.ts --match '*labels form*' --match '*GHMC and GHMR*' > $OUT/test-losses.log 2>&1; tail -5 $OUT/test-losses.log
timeout 300 npx ava test/fastpath.test.ts --match 'cuda graph*' --verbose > $OUT/test-graph.log 2>&1; tail -30 $OUT/test-graph.log
timeout 120 npx ts-node --transpile-only bench/losses.ts --device cuda > $OUT/bench-losses.log 2>&1; tail -20 $OUT/bench-losses.log
