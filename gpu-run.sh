set -u
nvidia-smi --query-gpu=name --format=csv,noheader
t0=$(date +%s)
node scripts/build-native.js > $OUT/build.log 2>&1 || { grep -B2 -A12 "error" $OUT/build.log | head -80; exit 1; }
echo "build $(( $(date +%s) - t0 )) s"
npx ava test/losses.test.ts test/contrastive.test.ts test/parity-ops.test.ts test/cuda.test.ts test/fastpath.test.ts test/retinanet.test.ts 2>&1 | grep -E "✔|✘|passed|failed|rror|skipped" | grep -v "ℹ" > $OUT/tests.txt
grep -E "passed|failed" $OUT/tests.txt; grep -A8 "✘" $OUT/tests.txt | head -40
npx ts-node --transpile-only bench/contrastive.ts --device cuda --profile $OUT/contrastive.json > $OUT/contrastive.txt 2>&1
tail -12 $OUT/contrastive.txt
npx ts-node --transpile-only bench/losses.ts --device cuda > $OUT/losses.txt 2>&1
tail -10 $OUT/losses.txt
python3 bench/profile_summary.py $OUT/contrastive.json 5 12 > $OUT/contrastive-profile.txt 2>&1
rm -f $OUT/contrastive.json
head -20 $OUT/contrastive-profile.txt
