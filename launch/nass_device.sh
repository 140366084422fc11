#!/usr/bin/env bash
# Issue 16 (NASS), one accelerator call: renders one noisy spatial dataset, trains every
# baseline / NASS / PCL-ablation run side by side on the one GPU (same seed, data, schedule,
# steps), evaluates each on the test split (SI-SNR, SDR), times the PCL step overhead on the
# idle GPU while evaluation runs on the CPUs, exports the one-channel runs without the PCL
# head, and packs the small results into $OUT.
# Usage: bash launch/nass_device.sh [steps] [configs]   (VARIANT=smoke for a CPU dry run)
set -u
STEPS=${1:-400}
CONFIGS=${2:-nass_sudormrf_mono,nass_sudormrf_mono:baseline,nass_sudormrf_mono:lambda1,nass_sudormrf_mono:m1,nass_sudormrf_mono:n2s,nass_sudormrf_bilateral,nass_sudormrf_bilateral:baseline,nass_dualpath,nass_dualpath:baseline}
DEADLINE=${DEADLINE:-345}          # seconds for training + evaluation; export and packing after
ROOT=${NASS_DIR:-/tmp/nass}
VARIANT=${VARIANT:-gpu}
OUT=${OUT:-/tmp/nass_out}
mkdir -p $OUT $ROOT
. "$(dirname "$0")/device_env.sh"
NUM=$(echo "$CONFIGS" | tr ',' '\n' | wc -l)
export XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-$(python3 -c "print(round(0.9 / ($NUM + 1), 3))")}
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
SETS=(--set=data.num_examples.train=${NTRAIN:-2000} --set=data.num_examples.val=${NVAL:-64}
      --set=data.num_examples.test=${NTEST:-200} --set=data.num_rooms=${ROOMS:-24}
      --set=data.segment_seconds=${SEGMENT:-2.0} "--set=data.target_mics=('L_tmic','R_tmic')"
      --set=train.num_steps=$STEPS --set=train.eval_every=${EVAL_EVERY:-100}
      --set=train.checkpoint_every=${EVAL_EVERY:-100} --set=train.eval_batches=${EVAL_BATCHES:-4}
      --set=eval.save_examples=0 --set=eval.compare_pretrained=False)
echo "[nass] $NUM runs, $STEPS steps, mem fraction $XLA_PYTHON_CLIENT_MEM_FRACTION, deadline $DEADLINE s (now $SECONDS)"
python3 launch/study.py --variant=$VARIANT --workdir=$ROOT --configs=$CONFIGS \
  --parallel=$NUM "${SETS[@]}" --report_dir=$ROOT/report > $ROOT.study.log 2>&1 &
STUDY_PID=$!
BENCH_PID=""
while kill -0 $STUDY_PID 2>/dev/null && [ $SECONDS -lt $(( DEADLINE - 45 )) ]; do
  sleep 5
  # Every run trained (train_summary.json) while evaluation runs on the CPUs: the GPU is free
  # for the step timing of NASS with and without its contrastive term.
  if [ -z "$BENCH_PID" ] && [ "$(ls $ROOT/*/train_summary.json 2>/dev/null | wc -l)" -ge "$NUM" ] && [ -z "${SKIP_BENCH:-}" ]; then
    echo "[nass] all runs trained at $SECONDS s: PCL step overhead benchmark"
    timeout $(( DEADLINE - SECONDS - 10 )) python3 launch/benchmark.py --what=step \
      --step_configs=nass_sudormrf_mono:nopcl,nass_sudormrf_mono,nass_dualpath:nopcl,nass_dualpath \
      --batch_sizes=16 --steps=20 --config=configs/nass_sudormrf_mono.py:$VARIANT \
      --workdir=$ROOT/bench > $ROOT/bench.log 2>&1 &
    BENCH_PID=$!
  fi
done
if kill -0 $STUDY_PID 2>/dev/null; then
  echo "[nass] deadline at $SECONDS s: stopping the runs (they checkpoint)"
  pkill -TERM -P $STUDY_PID; sleep 10; kill $STUDY_PID 2>/dev/null; sleep 2
fi
[ -n "$BENCH_PID" ] && { kill $BENCH_PID 2>/dev/null; wait $BENCH_PID 2>/dev/null; }
grep -v "it/s\]\|ex/s\]\|step/s\]" $ROOT.study.log | tail -15
echo "[nass] study stage ended at $SECONDS s"
for log in $ROOT/*/train.log; do echo "== $log"; tr '\r' '\n' < $log | grep -v "it/s\]\|step/s\]\|ex/s\]" | grep -i "step\|error\|Traceback" | tail -3; done
tail -5 $ROOT/bench.log 2>/dev/null
mkdir -p $ROOT/export
for entry in nass_sudormrf_mono nass_sudormrf_mono:baseline nass_dualpath nass_dualpath:baseline; do
  folder=$(for d in $ROOT/*/; do [ "$(cat $d/study_entry.txt 2>/dev/null)" = "$entry" ] && basename $d; done)
  [ -n "$folder" ] || { echo "[nass] $entry: no run folder"; continue; }
  which=best; ls $ROOT/$folder/checkpoints/best >/dev/null 2>&1 || which=latest
  timeout 60 python3 launch/nass_tools.py export --workdir=$ROOT/$folder --entry=$entry --variant=$VARIANT \
    --out=$ROOT/export/$folder --checkpoint=$which $(printf -- '--set=%s ' "${SETS[@]#--set=}") \
    > $ROOT/export/$folder.log 2>&1 &
done
wait; tail -qn1 $ROOT/export/*.log
cd $ROOT && tar czf $OUT/results.tar.gz --exclude=checkpoints --exclude=export */config.json */study_entry.txt \
  */train_summary.json */logs/metrics.jsonl */eval */train.log report bench ../nass.study.log bench.log 2>/dev/null
cd $ROOT/export && tar czf $OUT/export.tar.gz . 2>/dev/null
ls -la $OUT; echo "[nass] done at $SECONDS s"
