#!/usr/bin/env bash
# Issue 13 part 2, short budget: why concatenated IPD loses. One accelerator call (see README
# "GPU runs" for the carried .whl folder): renders the study's data, trains the arms side by
# side on the one GPU (same seed, data, schedule), evaluates each on the test split (SI-SDR
# only), exports every run in the pretrained format and packs the small results into $OUT.
# Usage: bash launch/device_probe.sh [steps] [configs]
# Rerunning on the still-warm machine resumes: finished runs are skipped, unfinished ones
# resume from their last checkpoint (launch/study.py, launch/train.py).
set -u
STEPS=${1:-1000}
CONFIGS=${2:-bilateral,ipd,ipd:cossin,ipd:cossin+sepnorm,ipd:zeroinit,ipd:cossin+zeroinit,mono}
DEADLINE=${DEADLINE:-560}          # seconds for the whole command; export and packing after
ROOT=${PROBE_DIR:-/tmp/ipd_probe}
VARIANT=${VARIANT:-gpu}            # smoke: the same pipeline at toy sizes (a CPU dry run)
if [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache
NUM=$(echo "$CONFIGS" | tr ',' '\n' | wc -l)
export XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-$(python3 -c "print(round(0.92 / $NUM, 3))")}
# models.build of this checkout does not pass model.feature_init to the model yet (the lead's
# refactor of models/__init__.py owns that line): add it in this device copy only.
python3 - <<'EOF' || exit 1
p = "spatialsep_jax/models/__init__.py"
s = open(p).read()
if "feature_init" not in s:
  old = '      feature_norm=model_config.get("feature_norm", "joint"),\n'
  assert old in s, "models.build changed: pass model.feature_init to the model there"
  s = s.replace(old, old + '      feature_init=model_config.get("feature_init", "default"),\n')
  open(p, "w").write(s)
  print("device copy: models.build passes model.feature_init")
EOF
python3 -c "import jax, flax, optax, grain; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
SETS=(--set=data.num_examples.train=${NTRAIN:-8000} --set=data.num_examples.val=${NVAL:-256}
      --set=data.num_examples.test=${NTEST:-200} --set=data.num_rooms=${ROOMS:-48} --set=train.num_steps=$STEPS --set=optim.decay_every_steps=2666
      --set=train.eval_every=${EVAL_EVERY:-125} --set=train.eval_batches=${EVAL_BATCHES:-16}
      --set=train.checkpoint_every=${EVAL_EVERY:-125}
      "--set=eval.metrics=('sisdr',)" --set=eval.vocoder=False --set=eval.save_examples=1)
echo "[probe] $NUM runs, $STEPS steps, mem fraction $XLA_PYTHON_CLIENT_MEM_FRACTION, deadline $DEADLINE s (now $SECONDS)"
python3 launch/study.py --variant=$VARIANT --workdir=$ROOT --configs=$CONFIGS \
  --parallel=$NUM "${SETS[@]}" --report_dir=$ROOT/report > $ROOT.study.log 2>&1 &
STUDY_PID=$!
while kill -0 $STUDY_PID 2>/dev/null && [ $SECONDS -lt $(( DEADLINE - 60 )) ]; do sleep 5; done
if kill -0 $STUDY_PID 2>/dev/null; then
  # Out of call time: SIGTERM to the training processes (children of study.py, by id) makes
  # each checkpoint where it is; a rerun on the warm machine resumes them.
  echo "[probe] deadline at $SECONDS s: stopping the runs (they checkpoint; rerun to resume)"
  pkill -TERM -P $STUDY_PID; sleep 15; kill $STUDY_PID 2>/dev/null; sleep 2
fi
grep -v "it/s\]\|ex/s\]\|step/s\]" $ROOT.study.log | tail -20
echo "[probe] study stage ended at $SECONDS s"
for log in $ROOT/*/train.log; do echo "== $log"; tr '\r' '\n' < $log | grep -v "it/s\]\|step/s\]\|ex/s\]" | tail -4; done
mkdir -p $ROOT/export
for entry in $(echo "$CONFIGS" | tr ',' ' '); do
  folder=$(for d in $ROOT/*/; do [ "$(cat $d/study_entry.txt 2>/dev/null)" = "$entry" ] && basename $d; done)
  [ -n "$folder" ] && ls $ROOT/$folder/eval/*/summary.json >/dev/null 2>&1 || { echo "[probe] $entry: not evaluated, not exported"; continue; }
  [ -f $ROOT/export/$folder/params.msgpack ] || timeout 90 python3 launch/export_pretrained.py \
    --workdir=$ROOT/$folder --out=$ROOT/export/$folder --entry=$entry --variant=$VARIANT "${SETS[@]}" \
    > $ROOT/export/$folder.log 2>&1 &
done
timeout 90 python3 launch/feature_probe.py --dump=$OUT/probe_batch.npz --entry=bilateral \
  --variant=$VARIANT "${SETS[@]}" --split=val --num=8 > $ROOT/export/probe_dump.log 2>&1 &
wait; tail -qn1 $ROOT/export/*.log
cd $ROOT && tar czf $OUT/results.tar.gz --exclude=checkpoints --exclude=export */config.json */study_entry.txt \
  */train_summary.json */logs/metrics.jsonl */eval */train.log report 2>/dev/null
cd $ROOT/export && for group in "bilateral mono" "ipd_zeroinit ipd_cossin_zeroinit" "ipd" "ipd_cossin" "ipd_sepnorm_cossin"; do
  present=$(for g in $group; do [ -d $g ] && echo $g; done)
  [ -n "$present" ] && tar czf $OUT/export_$(echo $group | cut -d' ' -f1).tar.gz $present
done
ls -la $OUT; echo "[probe] done at $SECONDS s"
