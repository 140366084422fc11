#!/usr/bin/env bash
# One accelerator session of the study (used through the device tool; see README "GPU runs").
# Usage: bash launch/device_study.sh <configs comma-separated> <train examples> <steps>
# Installs carried wheels, renders the shared data, trains + evaluates the configs two at a
# time, tries separate.py, and packs the small results into $OUT/results.tar.gz.
set -u
CONFIGS=$1; NTRAIN=${2:-8000}; STEPS=${3:-2000}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.45} JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache
python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/site .whl/pesq-*.tar.gz >$OUT/pesq_build.log 2>&1 && echo "pesq built" || { echo "pesq not built:"; tail -3 $OUT/pesq_build.log; }
python3 -c "import jax, flax, optax, orbax.checkpoint, grain; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
STUDY=/tmp/study
SETS="${EXTRA_SETS:-} --set=data.num_examples.train=$NTRAIN --set=data.num_examples.val=256 --set=data.num_examples.test=200 --set=data.num_rooms=48 --set=train.num_steps=$STEPS --set=train.eval_batches=16 --set=eval.save_examples=1"
python3 -c "import jax; print(jax.devices())" >/dev/null
timeout ${STUDY_TIMEOUT:-470} python3 launch/study.py --variant=gpu --workdir=$STUDY --configs=$CONFIGS --parallel=${PARALLEL:-2} $SETS --report_dir=$STUDY/report 2>&1 | grep -v "it/s\]\|ex/s\]\|step/s\]" | tail -40
# Runs of earlier calls on this (warm) machine whose test evaluation did not finish: resume it
# (train.py resumes at the last step and evaluates) while the call has time left.
MISSING=$(for d in $STUDY/*/; do [ -f $d/train_summary.json ] && ! ls $d/eval/*/summary.json >/dev/null 2>&1 && echo -n "$(cat $d/study_entry.txt 2>/dev/null || basename $d),"; done)
LEFT=$(( ${CALL_BUDGET:-570} - SECONDS ))
if [ -n "$MISSING" ] && [ $LEFT -gt 90 ]; then
  echo "resuming evaluation of ${MISSING%,} ($LEFT s left)"
  timeout $LEFT python3 launch/study.py --variant=gpu --workdir=$STUDY --configs=${MISSING%,} --parallel=2 $SETS --report_dir=$STUDY/report 2>&1 | grep -v "it/s\]\|ex/s\]\|step/s\]" | tail -10
fi
for log in $STUDY/*/train.log; do echo "== $log"; tail -3 $log; done
cd $STUDY && tar czf $OUT/results.tar.gz --exclude=checkpoints */config.json */study_entry.txt */train_summary.json */logs/metrics.jsonl */eval */train.log  report 2>/dev/null; ls -la $OUT
