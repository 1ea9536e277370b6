#!/usr/bin/env bash
# The GPU host calls for issue 24 (bench/NOTES.md says why each), one per argument, each under 590 s (BUDGET
# shortens one: its last runs are cut first); a machine is given back after 30 s idle, so make a follow-up at once:
#   next: the loader-fed row at the new resident rate (L's loader rows); the fold kernel with 32-bit indices
#   X  (ran 2026-12-05, H200: passed; b8 graph 824–847 fused vs 784–795) build; the folds made in one pass (FoldedBatchNorms) and the heads' biases through autocast's cache:
#      test/conv_fusion.test.ts, inference A/B (3 rounds), a profile, retinanet's CUDA tests, fastpath's copies test
#   W  (ran 2026-12-05, H100; the copies test's failure is the same with fusion off: b8 graph fused 778–803 vs 747–769 img/s; b1 graph 2–10 % slower fused) build; inference A/B (fusion on/off; bf16 graph and eager; b1, b8; 4 rounds of 60 calls) and a
#      profile of each; fastpath's bf16 copies test with ONESTAGE_CONV_FUSION=off, then on; the CUDA tests of cuda, nanodet, fastpath
#   V  (ran 2026-12-05, H100: conv_fusion passed; fastpath's copies test failed on retinanet's update, 1.45e-4 > 1e-4) build; test/conv_fusion.test.ts (the folded BatchNorm and cuDNN's fused conv + bias + ReLU in bf16
#      inference), the CUDA parts of retinanet.test.ts and fastpath's bf16 copies test; inference A/B interleaved (fusion on/off,
#      bf16 eager and graph, b1 and b8, 3 rounds); the probe's float32-bias check
#   U  (ran 2026-12-05, H100: fused conv+bias+ReLU ≈ the convolution alone; + add: slower than conv + our kernel) bench/cudnn_fusion_probe.py (cuDNN's fused conv+bias(+add)+ReLU against the convolution alone,
#      per layer of RetinaNet-50's inference, heuristics and benchmark mode); build; test/frozen_bn.test.ts (its waves
#      part as edited after call T); inference bf16 graph b8 (2 rounds); training b8 graph + one ahead, b16, b32
#   T  (ran 2026-12-05, H100: passed; one wave became the default — the test now compares 2 and 8 waves with it) build; test/frozen_bn.test.ts (the backward's grid as 1 or 2 waves of
#      resident blocks against 8 blocks per multiprocessor); b8 rows interleaved: default, ONESTAGE_FROZEN_BN_WAVES=1
#      and =2, 2 rounds; fastpath's channels-last CUDA test on what is left
#   S  (ran 2026-12-05, H100: the tests cut at 240 s, the copies' test failed once under five concurrent ava
#      processes and passed alone; the b8 rows came back from a warm rerun) build; test/frozen_bn.test.ts (the backward's mask from x and its two gradients against the old
#      kernel bitwise), every CUDA test of fastpath, train, max_pool and nanodet; b8 rows interleaved: the new
#      backward, the old one (ONESTAGE_SHORTCUT_GRADIENTS=autograd + ONESTAGE_RELU_MASK=output) and each half,
#      2 rounds; a profile; b16 and b32 on what is left
#   R  (superseded by S) build, every CUDA test of fastpath, train, max_pool and nanodet (the copies and the max-pool
#      kernels in all of them); the b8 rows interleaved (copies/autocast × 2 rounds), b16 and b32; a profile
#      of the b8 step on an H200
#   Q  (ran 2026-12-05, H200, warm) the bf16 copies' CUDA test (passed after its NanoDet detect graph got
#      topkCandidates)
#   P  (ran 2026-12-05, H200) build, the max-pool kernels' test, the bf16 weight copies' CUDA test (held to autocast's own
#      run-to-run floor), the channels-last tests; A/B of the copies against autocast's casts, interleaved:
#      inference bf16 eager and graph (3 rounds), training b8 graph-pipelined in both orders, and with
#      LibTorch's max pooling (ONESTAGE_MAX_POOL=aten)
#   O  (ran 2026-12-05, H100) build, the bf16 weight copies' CUDA test and the NanoDet-Plus stepwise graph
#      test; the b8 graph rows with the copies and with autocast's casts; inference (the same two); a profile
#   N  (ran 2026-12-05, H100) build, the NanoDet-Plus graph test step by step, every fastpath `cuda graph*`
#      test, then the batch 16 and 32 rows
#   G  build (with the carried libjpeg), the CUDA tests of sessions 5–8, the machine's CPU
#   H  the host pipeline on 16 cores: bench/data.ts stages, sharp vs onestage's JPEG decoder, pool 4 and 16;
#      inference with the detect graphs
#   J  batch 16 and 32 rows, a NanoDet-Plus-m profile
#   L  (ran 2026-12-05) build, the pipelined-steps, queued-update and fused-SGD tests, test/jpeg.test.ts, the
#      b8 rows (read first / queued × one ahead; loader-fed through Trainer.fit, decoder auto/sharp ×
#      pipeline on/off), inference with the detect graphs, fastpath's NanoDet-Plus graph test
# Prepare here first (Debian VM, after npm install): bash scripts/device-pack.sh
# then call the device with carry [".device"] and `source .device/env.sh && bash bench/gpu_plan.sh N`.
# Results land under $OUT.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out"
t0=$(date +%s)
stamp() { echo "gpu_plan: $* ($(($(date +%s) - t0)) s)"; }
ts() { timeout "$1" npx ts-node --transpile-only "${@:2}"; }
# seconds left of the call's BUDGET (default 585; a shorter one cuts the last runs, never the first)
left() { local l=$((${BUDGET:-585} - $(date +%s) + t0)); echo $((l > 1 ? l : 1)); }
least() { echo $(($1 < $2 ? $1 : $2)); }

case "${1:-}" in
  G)
    (nproc; cat /sys/fs/cgroup/cpu.max 2>/dev/null; lscpu | grep -E 'Model name|^CPU\(s\)|Thread|Flags' | cut -c1-300) >"$out/machine.txt" 2>&1
    timeout 560 bash scripts/gpu-check.sh tests test/fastpath.test.ts test/jpeg.test.ts test/nanodet.test.ts test/cuda.test.ts test/data.test.ts
    stamp "tests done"
    node -e "console.log(require('./build/Release/onestage.node').buildInfo())" | tee "$out/build_info.txt"
    ;;
  H)
    # where the loader's host time goes on 16 cores: each decoder alone, pool 4 and 16
    for pool in 16 4; do
      UV_THREADPOOL_SIZE=$pool ts 170 bench/data.ts --images 192 --size 960 --side 640 --batch 8 --device cuda --stages --data /tmp/data960 >"$out/data-pool$pool.txt" 2>&1
      stamp "data.ts pool $pool"
    done
    ts 200 bench/inference.ts --device cuda --no-reference --batches 1,8 >"$out/inference.txt" 2>&1
    stamp "inference"
    ;;
  J)
    for b in 16 32; do
      ts 150 bench/train_throughput.ts --device cuda --precisions bf16 --batch $b --no-reference --steps 12 --warmup 6 --loader-images 0 >"$out/train-b$b.txt" 2>&1
      stamp "train b$b"
    done
    ts 200 bench/nanodet_latency.ts --train-batch 32 --steps 10 --warmup 4 --no-reference --models 0 --profile "$out/nanodet-m.json" >"$out/nanodet.txt" 2>&1
    python3 bench/profile_summary.py "$out"/nanodet-m*.json >"$out/nanodet-profile.txt" 2>&1
    stamp "nanodet profile"
    ;;
  L)
    (nproc; lscpu | grep -E 'Model name' | cut -c1-200) >"$out/machine.txt" 2>&1
    timeout 200 bash scripts/gpu-check.sh build || exit 1
    stamp "built"
    timeout 130 npx ava --tap test/train.test.ts test/jpeg.test.ts test/fastpath.test.ts --match '*pipelined*' --match '*queued*' --match '*jpeg*' --match "*'fused' sgd*" >"$out/tests.tap" 2>&1
    stamp "tests rc=$?"
    grep -E '^(not ok|# (tests|pass|skip|fail))' "$out/tests.tap"
    ts $(least 230 $(left)) bench/train_throughput.ts --device cuda --precisions bf16 --batch 8 --no-reference --steps 20 --warmup 8 --rows graph-readfirst,graph-pipelined-readfirst,graph,graph-pipelined \
      --loader-images 240 --loader-source 960 --loader-epochs 2 --decoder auto,sharp --pipeline on,off >"$out/train-b8.txt" 2>&1
    stamp "train b8"
    ts $(least 80 $(left)) bench/inference.ts --device cuda --no-reference --batches 1,8 >"$out/inference.txt" 2>&1
    stamp "inference"
    timeout $(left) npx ava --tap test/fastpath.test.ts --match '*NanoDet-Plus step*' >"$out/tests-fastpath.tap" 2>&1
    stamp "fastpath rc=$?"
    ;;
  N)
    # after L (2026-12-05): the NanoDet-Plus graph test step by step, every fastpath graph test (their
    # helpers changed), then the batch 16 and 32 rows in what is left (BUDGET)
    timeout 200 bash scripts/gpu-check.sh build || exit 1
    stamp "built"
    timeout $(least 90 $(left)) npx ava --tap --verbose test/fastpath.test.ts --match '*NanoDet-Plus step*' >"$out/tests-nanodet.tap" 2>&1
    stamp "nanodet graph test rc=$?"
    grep -E '^(ok|not ok|# )' "$out/tests-nanodet.tap" | cut -c1-400
    timeout $(least 150 $(left)) npx ava --tap test/fastpath.test.ts --match 'cuda graph*' >"$out/tests-fastpath.tap" 2>&1
    stamp "fastpath rc=$?"
    grep -E '^(not ok|# )' "$out/tests-fastpath.tap" | cut -c1-400
    for b in 16 32; do
      ts $(least 80 $(left)) bench/train_throughput.ts --device cuda --precisions bf16 --batch $b --no-reference --steps 12 --warmup 6 --rows graph,graph-pipelined --loader-images 0 >"$out/train-b$b.txt" 2>&1
      stamp "train b$b"
    done
    ;;
  O)
    # the convolution weights' bf16 copies (2026-12-05, eleventh session): correctness, then rows with and
    # without them in the same run, then where the b8 graph step's time goes now
    timeout 200 bash scripts/gpu-check.sh build || exit 1
    stamp "built"
    timeout $(least 150 $(left)) npx ava --tap --verbose test/fastpath.test.ts --match '*bf16 copies*' --match '*NanoDet-Plus step*' >"$out/tests.tap" 2>&1
    stamp "tests rc=$?"
    grep -E '^(ok|not ok|# )' "$out/tests.tap" | cut -c1-600
    ts $(least 170 $(left)) bench/train_throughput.ts --device cuda --precisions bf16 --batch 8 --no-reference --steps 20 --warmup 8 --rows graph,graph-pipelined --weight-casts copies,autocast --loader-images 0 >"$out/train-b8.txt" 2>&1
    stamp "train b8"
    ts $(least 110 $(left)) bench/inference.ts --device cuda --no-reference --batches 1,8 >"$out/inference.txt" 2>&1
    stamp "inference"
    ts $(least 80 $(left)) bench/train_throughput.ts --device cuda --precisions bf16 --batch 8 --no-reference --steps 8 --warmup 6 --rows graph --loader-images 0 --profile "$out/b8.json" >"$out/profile-run.txt" 2>&1
    python3 bench/profile_summary.py "$out"/b8*.json >"$out/profile.txt" 2>&1
    stamp "profile"
    ;;
  P)
    timeout 200 bash scripts/gpu-check.sh build || exit 1
    stamp "built"
    timeout $(least 150 $(left)) npx ava --tap --verbose test/max_pool.test.ts test/fastpath.test.ts --match '*bf16 copies*' --match 'max pool*' --match '*channels-last*' >"$out/tests.tap" 2>&1
    stamp "tests rc=$?"
    grep -E '^(ok|not ok|# )' "$out/tests.tap" | cut -c1-600
    ts $(least 100 $(left)) bench/inference.ts --device cuda --no-reference --batches 1,8 --repeat 3 \
      --layouts 'channels-last + bf16 + CUDA graph,channels-last + bf16 + CUDA graph (autocast casts),channels-last + bf16,channels-last + bf16 (autocast casts)' >"$out/inference.txt" 2>&1
    stamp "inference"
    # the step: copies and the stem's max-pool kernels (default), autocast's casts, LibTorch's max pooling
    ts $(least 100 $(left)) bench/train_throughput.ts --device cuda --precisions bf16 --batch 8 --no-reference --steps 20 --warmup 8 --rows graph-pipelined --weight-casts copies,autocast --loader-images 0 >"$out/train-b8-a.txt" 2>&1
    stamp "train b8 a"
    ONESTAGE_MAX_POOL=aten ts $(least 60 $(left)) bench/train_throughput.ts --device cuda --precisions bf16 --batch 8 --no-reference --steps 20 --warmup 8 --rows graph-pipelined --loader-images 0 >"$out/train-b8-aten-pool.txt" 2>&1
    stamp "train b8 aten pool"
    ts $(least 100 $(left)) bench/train_throughput.ts --device cuda --precisions bf16 --batch 8 --no-reference --steps 20 --warmup 8 --rows graph-pipelined --weight-casts autocast,copies --loader-images 0 >"$out/train-b8-b.txt" 2>&1
    stamp "train b8 b"
    ;;
  Q)
    # after P (2026-12-05): the bf16 copies' test with the detections compared to bf16's resolution
    timeout 200 bash scripts/gpu-check.sh build || exit 1
    stamp "built"
    timeout $(left) npx ava --tap --verbose test/fastpath.test.ts --match '*bf16 copies*' >"$out/tests.tap" 2>&1
    stamp "tests rc=$?"
    grep -E '^(ok|not ok|# )' "$out/tests.tap" | cut -c1-600
    ;;
  R)
    timeout 200 bash scripts/gpu-check.sh build || exit 1
    stamp "built"
    timeout $(least 200 $(left)) npx ava --tap test/fastpath.test.ts test/train.test.ts test/max_pool.test.ts test/nanodet.test.ts >"$out/tests.tap" 2>&1
    stamp "tests rc=$?"
    grep -E '^(not ok|# (tests|pass|skip|fail))' "$out/tests.tap" | cut -c1-400
    ts $(least 150 $(left)) bench/train_throughput.ts --device cuda --precisions bf16 --batch 8 --no-reference --steps 20 --warmup 8 --rows graph-pipelined --weight-casts copies,autocast --repeat 2 --loader-images 0 >"$out/train-b8.txt" 2>&1
    stamp "train b8"
    for b in 16 32; do
      ts $(least 70 $(left)) bench/train_throughput.ts --device cuda --precisions bf16 --batch $b --no-reference --steps 12 --warmup 6 --rows graph-pipelined --loader-images 0 >"$out/train-b$b.txt" 2>&1
      stamp "train b$b"
    done
    ts $(least 60 $(left)) bench/train_throughput.ts --device cuda --precisions bf16 --batch 8 --no-reference --steps 8 --warmup 6 --rows graph --loader-images 0 --profile "$out/b8.json" >"$out/profile-run.txt" 2>&1
    python3 bench/profile_summary.py "$out"/b8*.json >"$out/profile.txt" 2>&1
    stamp "profile"
    ;;
  S)
    timeout 200 bash scripts/gpu-check.sh build || exit 1
    stamp "built"
    timeout $(least 240 $(left)) npx ava --tap test/frozen_bn.test.ts test/fastpath.test.ts test/train.test.ts test/max_pool.test.ts test/nanodet.test.ts >"$out/tests.tap" 2>&1
    stamp "tests rc=$?"
    grep -E '^(not ok|# (tests|pass|skip|fail))' "$out/tests.tap" | cut -c1-400
    old=ONESTAGE_SHORTCUT_GRADIENTS=autograd+ONESTAGE_RELU_MASK=output
    ts $(least 150 $(left)) bench/train_throughput.ts --device cuda --precisions bf16 --batch 8 --no-reference --steps 20 --warmup 8 --rows graph-pipelined --repeat 2 --loader-images 0 \
      --variants "default,$old,ONESTAGE_SHORTCUT_GRADIENTS=autograd,ONESTAGE_RELU_MASK=output" --out "$out/train-b8.json" >"$out/train-b8.txt" 2>&1
    stamp "train b8"
    ts $(least 60 $(left)) bench/train_throughput.ts --device cuda --precisions bf16 --batch 8 --no-reference --steps 8 --warmup 6 --rows graph --loader-images 0 --profile "$out/b8.json" >"$out/profile-run.txt" 2>&1
    python3 bench/profile_summary.py "$out"/b8*.json >"$out/profile.txt" 2>&1
    stamp "profile"
    for b in 16 32; do
      ts $(least 70 $(left)) bench/train_throughput.ts --device cuda --precisions bf16 --batch $b --no-reference --steps 12 --warmup 6 --rows graph-pipelined --loader-images 0 --out "$out/train-b$b.json" >"$out/train-b$b.txt" 2>&1
      stamp "train b$b"
    done
    ;;
  X)
    timeout 200 bash scripts/gpu-check.sh build || exit 1
    stamp "built"
    timeout $(least 120 $(left)) npx ava --tap --concurrency 1 test/conv_fusion.test.ts 2>&1 | grep -E '^(not ok|ok|# (tests|pass|skip|fail))|resnet-50 (c3|classification)|  ---|message|at:' | cut -c1-300
    stamp "conv_fusion tests"
    ts $(least 150 $(left)) bench/inference.ts --device cuda --no-reference --batches 1,8 --repeat 3 --iters 60 --layouts 'channels-last + bf16 + CUDA graph,channels-last + bf16' \
      --variants default,ONESTAGE_CONV_FUSION=off --profile "$out/detect.json" 2>&1 | grep -E '^\| onestage' | cut -c1-200
    stamp "inference A/B"
    python3 bench/profile_summary.py "$out/detect-default.json" 5 12 2>&1 | head -30 | cut -c1-180
    rm -f "$out"/detect-*.json
    timeout $(least 90 $(left)) npx ava --tap test/retinanet.test.ts --match '*(cuda)*' 2>&1 | grep -E '^(not ok|# (tests|pass|skip|fail))' | cut -c1-300
    stamp "retinanet (cuda)"
    timeout $(least 90 $(left)) npx ava --tap test/fastpath.test.ts --match 'amp: the bf16 copies*' 2>&1 | grep -E '^(not ok|# (pass|fail))|copies vs|differ' | cut -c1-300
    stamp "fastpath copies (NanoDet-Plus detect under amp)"
    ;;
  W)
    timeout 200 bash scripts/gpu-check.sh build || exit 1
    stamp "built"
    ts $(least 200 $(left)) bench/inference.ts --device cuda --no-reference --batches 1,8 --repeat 4 --iters 60 --layouts 'channels-last + bf16 + CUDA graph,channels-last + bf16' \
      --variants default,ONESTAGE_CONV_FUSION=off --profile "$out/detect.json" 2>&1 | grep -E '^\| onestage|profile of' | cut -c1-200
    stamp "inference A/B"
    for f in "$out"/detect-*.json; do echo "== $f"; python3 bench/profile_summary.py "$f" 5 25 2>&1 | head -45 | cut -c1-180; done
    rm -f "$out"/detect-*.json
    stamp "profiles"
    for fusion in off on; do
      ONESTAGE_CONV_FUSION=$fusion timeout $(least 60 $(left)) npx ava --tap test/fastpath.test.ts --match 'amp: the bf16 copies*' 2>&1 | grep -E '^(not ok|# (pass|fail))|copies vs|differ' | cut -c1-300
      stamp "fastpath copies, fusion $fusion"
    done
    timeout $(least 300 $(left)) npx ava --tap --concurrency 1 test/cuda.test.ts test/nanodet.test.ts test/fastpath.test.ts test/frozen_bn.test.ts 2>&1 | grep -E '^(not ok|# (tests|pass|skip|fail))' | cut -c1-300
    stamp "cuda, nanodet, fastpath, frozen_bn"
    ;;
  V)
    timeout 200 bash scripts/gpu-check.sh build || exit 1
    stamp "built"
    timeout $(least 150 $(left)) npx ava --tap --concurrency 1 test/conv_fusion.test.ts 2>&1 | grep -E '^(not ok|ok|# (tests|pass|skip|fail))|deviation|differ|  ---|message|at:' | cut -c1-300
    stamp "conv_fusion tests"
    ts $(least 150 $(left)) bench/inference.ts --device cuda --no-reference --batches 1,8 --repeat 3 --layouts 'channels-last + bf16 + CUDA graph,channels-last + bf16' \
      --variants default,ONESTAGE_CONV_FUSION=off 2>&1 | grep -E '^\| onestage' | cut -c1-200
    stamp "inference A/B"
    python3 bench/cudnn_fusion_probe.py 2>&1 | tail -2 | cut -c1-300
    stamp "probe"
    timeout $(least 120 $(left)) npx ava --tap test/retinanet.test.ts --match '*(cuda)*' 2>&1 | grep -E '^(not ok|# (tests|pass|skip|fail))' | cut -c1-300
    stamp "retinanet (cuda)"
    timeout $(least 150 $(left)) npx ava --tap test/fastpath.test.ts --match 'amp: the bf16 copies*' 2>&1 | grep -E '^(not ok|# (tests|pass|skip|fail))|copies vs' | cut -c1-300
    stamp "fastpath copies"
    ;;
  U)
    python3 bench/cudnn_fusion_probe.py 2>&1 | tail -45 | cut -c1-220
    stamp "probe (heuristics)"
    python3 bench/cudnn_fusion_probe.py --benchmark 2>&1 | tail -3 | cut -c1-300
    stamp "probe (benchmark)"
    timeout 200 bash scripts/gpu-check.sh build || exit 1
    stamp "built"
    timeout $(least 90 $(left)) npx ava --tap test/frozen_bn.test.ts 2>&1 | grep -E '^(not ok|ok|# (tests|pass|skip|fail))|bitwise|differ' | cut -c1-300
    stamp "frozen_bn tests"
    ts $(least 90 $(left)) bench/inference.ts --device cuda --no-reference --batches 8 --repeat 2 --layouts 'channels-last + bf16 + CUDA graph,channels-last + bf16' 2>&1 | grep -E 'onestage' | cut -c1-200
    stamp "inference"
    for b in 8 16 32; do
      ts $(least 80 $(left)) bench/train_throughput.ts --device cuda --precisions bf16 --batch $b --no-reference --steps 16 --warmup 6 --rows graph-pipelined --loader-images 0 --out "$out/train-b$b.json" 2>&1 | grep -E 'img/s' | cut -c1-200
      stamp "train b$b"
    done
    ;;
  T)
    timeout 200 bash scripts/gpu-check.sh build || exit 1
    stamp "built"
    timeout $(least 90 $(left)) npx ava --tap test/frozen_bn.test.ts 2>&1 | grep -E '^(not ok|ok|# (tests|pass|skip|fail))|bitwise|differ' | cut -c1-300
    stamp "frozen_bn tests"
    ts $(least 100 $(left)) bench/train_throughput.ts --device cuda --precisions bf16 --batch 8 --no-reference --steps 20 --warmup 8 --rows graph-pipelined --repeat 2 --loader-images 0 \
      --variants "default,ONESTAGE_FROZEN_BN_WAVES=1,ONESTAGE_FROZEN_BN_WAVES=2" --out "$out/train-b8.json" 2>&1 | grep -E 'img/s'
    stamp "train b8"
    timeout $(least 60 $(left)) npx ava --tap test/fastpath.test.ts --match '*channels-last training*' 2>&1 | grep -E '^(not ok|ok|# (pass|fail))' | cut -c1-200
    stamp "fastpath channels-last"
    ;;
  *)
    echo "usage: bash bench/gpu_plan.sh N|O|P|Q|R|S|T|G|H|J|L" >&2
    exit 2
    ;;
esac
