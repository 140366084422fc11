#!/usr/bin/env bash
# Issue 17 (seed 004): one accelerator call for the fusion study. Renders the noisy binaural
# set (configs/fusion.py:gpu data: one talker in diffuse noise, 0-15 dB SNR, targets at both
# T-mics, test rooms unseen in training), trains the 4 topologies x 2 encoders side by side on
# the one GPU with equal budgets (same data, seed, steps, batch), evaluates each on the same
# test mixtures (per-ear and binaural metrics, MBSTOI included), measures the per-layer
# activation variance of both sides, and packs the small results into $OUT.
# Usage (device tool, carry .whl with the pyclarity wheel in it):
#   bash launch/fusion_device.sh [steps] [train examples] [test examples]
# EXTRA_SETS="--set=data.segment_seconds=2.0" adds overrides for every run (word-split).
set -u
STEPS=${1:-400}; NTRAIN=${2:-3000}; NTEST=${3:-80}
DEADLINE=${DEADLINE:-430}          # seconds for the study stage and after
ROOT=${FUSION_DIR:-/tmp/fusion}
VARIANT=${VARIANT:-gpu}
CONFIGS=${CONFIGS:-fusion:independent+learned,fusion:front+learned,fusion:back+learned,fusion:double+learned,fusion:independent+stft,fusion:front+stft,fusion:back+stft,fusion:double+stft}
if [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache
# Without an install (the device copy), spatialsep_jax.configs / .launch are the top-level
# folders: linked there (launch/common.ROOT is then spatialsep_jax/, hence the absolute data
# folders below).
if ! python3 -c "import spatialsep_jax.configs, spatialsep_jax.launch" 2>/dev/null; then
  ln -s ../configs spatialsep_jax/configs; ln -s ../launch spatialsep_jax/launch
fi
NUM=$(echo "$CONFIGS" | tr ',' '\n' | wc -l)
export XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-$(python3 -c "print(round(0.9 / ($NUM + 1), 3))")}
python3 -c "import jax, flax, optax, clarity; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'pyclarity', clarity.__version__, jax.devices())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
SETS=(${EXTRA_SETS:-} --set=data.shards_dir=$ROOT-data --set=data.cache_dir=$ROOT-cache
      --set=data.num_examples.train=$NTRAIN --set=data.num_examples.val=128
      --set=data.num_examples.test=$NTEST --set=train.num_steps=$STEPS
      --set=train.eval_every=$(( STEPS / 2 )) --set=train.checkpoint_every=$(( STEPS / 2 ))
      --set=train.eval_batches=8 --set=eval.max_examples=$NTEST --set=eval.save_examples=0
      --set=eval.num_workers=${EVAL_WORKERS:-2})
mkdir -p $ROOT
echo "[fusion] $NUM runs, $STEPS steps, $NTRAIN train / $NTEST test, mem fraction $XLA_PYTHON_CLIENT_MEM_FRACTION (now $SECONDS s)"
python3 launch/study.py --variant=$VARIANT --workdir=$ROOT --configs=$CONFIGS \
  --parallel=$NUM "${SETS[@]}" --report_dir=$ROOT/report > $ROOT/study.log 2>&1 &
STUDY_PID=$!
while kill -0 $STUDY_PID 2>/dev/null && [ $SECONDS -lt $(( DEADLINE - 50 )) ]; do sleep 5; done
if kill -0 $STUDY_PID 2>/dev/null; then
  echo "[fusion] deadline at $SECONDS s: stopping the runs (they checkpoint)"
  pkill -TERM -P $STUDY_PID; sleep 10; kill $STUDY_PID 2>/dev/null; sleep 2
fi
grep -v "it/s\]\|ex/s\]\|step/s\]" $ROOT/study.log | grep -v "^\s*$" | tail -25
echo "[fusion] study stage ended at $SECONDS s"
for log in $ROOT/*/train.log; do echo "== $log"; tr '\r' '\n' < $log | grep -v "it/s\]\|step/s\]\|ex/s\]" | grep -i "step\|error\|rate\|samples" | tail -3; done
timeout $(( DEADLINE + 40 - SECONDS )) python3 launch/fusion_probe.py --runs=$ROOT --out=$ROOT/variances.json \
  --variant=$VARIANT "${SETS[@]}" 2>&1 | grep "variances\]" | tail -12
python3 launch/fusion_report.py --runs=$ROOT --variances=$ROOT/variances.json > $ROOT/tables.md 2>&1
cat $ROOT/tables.md | head -40
cd $ROOT && tar czf $OUT/results.tar.gz study.log tables.md variances.json */study_entry.txt */train_summary.json \
  */config.json */logs/metrics.jsonl */eval/*/rows.csv */eval/*/summary.json */train.log 2>/dev/null; ls -la $OUT
echo "[fusion] done at $SECONDS s"
