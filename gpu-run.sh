set -u
nvidia-smi --query-gpu=name --format=csv,noheader
t0=$(date +%s)
node scripts/build-native.js > $OUT/build.log 2>&1 || { tail -40 $OUT/build.log; exit 1; }
echo "build $(( $(date +%s) - t0 )) s"
npx ava test/contrastive.test.ts test/parity-ops.test.ts 2>&1 | grep -E "✔|✘|passed|failed|Error|error" | grep -v "ℹ" > $OUT/tests.txt
npx ava test/fastpath.test.ts -m '*contrastive*' 2>&1 | grep -E "✔|✘|passed|failed|rror|step" >> $OUT/tests.txt
tail -5 $OUT/tests.txt; grep -c "✔" $OUT/tests.txt; grep "✘" $OUT/tests.txt
npx ts-node --transpile-only bench/contrastive.ts --device cuda --profile $OUT/contrastive.json > $OUT/contrastive.txt 2>&1
cat $OUT/contrastive.txt | tail -14
npx ts-node --transpile-only bench/losses.ts --device cuda --profile /tmp/loss > $OUT/losses.txt 2>&1
tail -10 $OUT/losses.txt
for k in ghmc ghmr focal; do echo "== $k"; python3 bench/profile_summary.py /tmp/loss-$k.json 5 30; done > $OUT/loss-profiles.txt 2>&1
python3 bench/profile_summary.py $OUT/contrastive.json 5 40 > $OUT/contrastive-profile.txt 2>&1
gzip -f $OUT/contrastive.json
head -60 $OUT/loss-profiles.txt
