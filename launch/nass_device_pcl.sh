#!/usr/bin/env bash
# Issue 16 (NASS), the PCL-scale call: ONE accelerator call of at most ~540 s wall, wheels and
# render included. Same data, seed and budget for every run:
#   mono SuDoRM-RF: baseline, nopcl (noise output alone), NASS (the seed's PCL), pclnorm (NASS
#   with the PCL input standardised, contrastive.py input_norm="standardize");
#   dual-path transformer: baseline, NASS.
# Stages, on the script's own clock ($SECONDS), each with a deadline so that every run leaves
# its checkpoints and FINISHED test rows:
#   1. wheels; then the render (CPUs) and, at the same time on the idle GPU, the PCL step-time
#      benchmark (launch/benchmark.py --what=step; cut at T_BENCH);
#   2. all runs train side by side (train.num_steps=STEPS, validation every EVAL_EVERY steps);
#      a run still training at T_TRAIN gets SIGTERM (it saves latest/ and stops);
#   3. test evaluation (SI-SNR and SDR only, NTEST mixtures): train.py evaluates its best
#      checkpoint after training; runs stopped at T_TRAIN are evaluated by launch/evaluate.py
#      (best checkpoint, else latest); whatever still runs at T_EVAL is stopped (its rows.csv
#      holds the mixtures scored so far);
#   4. the small results into $OUT/nass_pcl_results.tar.gz (no checkpoints), $OUT/timeline.txt.
# Usage: bash launch/nass_device_pcl.sh [steps] [runs]
#   runs: space-separated configs/<name>.py entries, tokens after ':' joined by '+'.
#   CPU dry run: VARIANT=smoke SKIP_WHEELS=1 OUT=/tmp/x NTRAIN=16 NVAL=8 NTEST=8 ROOMS=3 \
#                SEGMENT=1.0 EVAL_EVERY=2 T_BENCH=... T_TRAIN=... T_EVAL=... bash launch/nass_device_pcl.sh 4
# Then, on the machine that gets $OUT back:
#   mkdir -p /tmp/nass_pcl && tar xzf <files_at>/nass_pcl_results.tar.gz -C /tmp/nass_pcl
#   python launch/nass_tools.py report --runs=/tmp/nass_pcl --pairs=call2 --bench=/tmp/nass_pcl/bench
set -u
STEPS=${1:-400}
RUNS=${2:-"nass_sudormrf_mono:baseline nass_sudormrf_mono:nopcl nass_sudormrf_mono nass_sudormrf_mono:pclnorm nass_dualpath:baseline nass_dualpath"}
VARIANT=${VARIANT:-gpu}
ROOT=${NASS_DIR:-/tmp/nass_pcl}
OUT=${OUT:-/tmp/nass_pcl_out}
T_BENCH=${T_BENCH:-190}     # the benchmark is stopped here if still running (rows so far kept)
T_TRAIN=${T_TRAIN:-390}     # runs still training get SIGTERM (latest/ saved) and are evaluated
T_EVAL=${T_EVAL:-495}       # every evaluation still running is stopped (its rows.csv kept)
EVAL_WORKERS=${EVAL_WORKERS:-2}
BENCH=${BENCH:-nass_sudormrf_mono:nopcl,nass_sudormrf_mono,nass_sudormrf_mono:pclnorm,nass_dualpath:nopcl,nass_dualpath}
mkdir -p "$OUT" "$ROOT"
TIMELINE=$OUT/timeline.txt
: > "$TIMELINE"
mark() { echo "[nass-pcl] $SECONDS s: $*" | tee -a "$TIMELINE"; }
. "$(dirname "$0")/device_env.sh"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" | tee -a "$TIMELINE"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee -a "$TIMELINE"
# One data section for every run (the same render; scenes seeded by split and index, so these
# are the test mixtures of the first NASS call when the sizes are its defaults).
SETS=(data.num_examples.train=${NTRAIN:-2000} data.num_examples.val=${NVAL:-64}
      data.num_examples.test=${NTEST:-200} data.num_rooms=${ROOMS:-24}
      data.segment_seconds=${SEGMENT:-2.0} "data.target_mics=('L_tmic','R_tmic')"
      data.shards_dir=$ROOT/shards)
RUN_SETS=(train.num_steps=$STEPS train.eval_every=${EVAL_EVERY:-100}
          train.checkpoint_every=${EVAL_EVERY:-100} train.eval_batches=${EVAL_BATCHES:-4}
          eval.save_examples=0 eval.compare_pretrained=False eval.num_workers=$EVAL_WORKERS
          "eval.metrics=('sisdr','sdr')")
CONFIG_FLAGS=(); for s in "${SETS[@]}"; do CONFIG_FLAGS+=("--config.$s"); done
RUN_FLAGS=("${CONFIG_FLAGS[@]}"); for s in "${RUN_SETS[@]}"; do RUN_FLAGS+=("--config.$s"); done
config_path() {  # entry -> configs/<name>.py:<variant>,<tokens>
  local name=${1%%:*} tokens=""; [ "$name" != "$1" ] && tokens=${1#*:}
  local arg; arg=$(echo "$VARIANT,${tokens//+/,}" | sed 's/^,//; s/,$//')
  echo "configs/$name.py${arg:+:$arg}"
}
# entry -> the run's config.name (its folder), all in one python call
declare -A PIDS NAMES
while read -r entry name; do NAMES[$entry]=$name; done < <(python3 -c "
import sys; from spatialsep_jax.launch import common
for e in sys.argv[2:]: print(e, common.load_named_config(e, sys.argv[1]).name)" "$VARIANT" $RUNS) || exit 1
for entry in $RUNS; do [ -n "${NAMES[$entry]:-}" ] || { echo "no config for $entry"; exit 1; }; done
FIRST=${RUNS%% *}
mark "render -> $ROOT/shards; PCL step benchmark on the idle GPU ($BENCH)"
python3 launch/render.py --config=$(config_path $FIRST) "${CONFIG_FLAGS[@]}" > $ROOT/render.log 2>&1 &
RENDER_PID=$!
BENCH_PID=""
BENCH_LEFT=$(( T_BENCH - SECONDS ))   # T_BENCH is on the script's clock, not the benchmark's
if [ -z "${SKIP_BENCH:-}" ] && [ $BENCH_LEFT -gt 30 ]; then
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 timeout $BENCH_LEFT python3 launch/benchmark.py --what=step \
    --step_configs=$BENCH --batch_sizes=16 --steps=${BENCH_STEPS:-20} \
    --config=configs/nass_sudormrf_mono.py${VARIANT:+:$VARIANT} --workdir=$ROOT/bench > $ROOT/bench.log 2>&1 &
  BENCH_PID=$!
else
  mark "no step benchmark (SKIP_BENCH set or only $BENCH_LEFT s left before T_BENCH)"
fi
wait $RENDER_PID; RENDER_RC=$?
mark "render ended (rc $RENDER_RC)"; tail -4 $ROOT/render.log | tee -a "$TIMELINE"
[ $RENDER_RC -eq 0 ] || { tail -30 $ROOT/render.log; exit 1; }
if [ -n "$BENCH_PID" ]; then
  wait $BENCH_PID; mark "benchmark ended (rc $?; 124 = cut at T_BENCH)"
  grep -h "step .* ms back to back\|Error\|error" $ROOT/bench.log | tee -a "$TIMELINE"
fi
NUM=$(echo $RUNS | wc -w)
export XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-$(python3 -c "print(round(0.9 / $NUM, 3))")}
for entry in $RUNS; do
  name=${NAMES[$entry]}
  mkdir -p $ROOT/$name; echo "$entry" > $ROOT/$name/study_entry.txt
  python3 launch/train.py --config=$(config_path $entry) --workdir=$ROOT/$name "${RUN_FLAGS[@]}" \
    > $ROOT/$name/train.log 2>&1 &
  PIDS[$entry]=$!
done
mark "$NUM runs training ($STEPS steps, mem fraction $XLA_PYTHON_CLIENT_MEM_FRACTION): ${NAMES[*]}"
alive() { for e in $RUNS; do kill -0 ${PIDS[$e]} 2>/dev/null && return 0; done; return 1; }
while alive && [ $SECONDS -lt $T_TRAIN ]; do sleep 3; done
STOPPED=()
for entry in $RUNS; do
  name=${NAMES[$entry]}
  if kill -0 ${PIDS[$entry]} 2>/dev/null && [ ! -e $ROOT/$name/train_summary.json ]; then
    kill -TERM ${PIDS[$entry]}; STOPPED+=($entry)   # one process: saves latest/ and exits
  fi
done
[ ${#STOPPED[@]} -gt 0 ] && mark "T_TRAIN: SIGTERM to the runs still training: ${STOPPED[*]}"
for entry in ${STOPPED[@]+"${STOPPED[@]}"}; do
  for _ in $(seq 40); do kill -0 ${PIDS[$entry]} 2>/dev/null || break; sleep 1; done
  kill -KILL ${PIDS[$entry]} 2>/dev/null && mark "${NAMES[$entry]}: no exit 40 s after SIGTERM, killed"
  wait ${PIDS[$entry]} 2>/dev/null
  name=${NAMES[$entry]}
  which=best; ls $ROOT/$name/checkpoints/best >/dev/null 2>&1 || which=latest
  python3 launch/evaluate.py --config=$(config_path $entry) --workdir=$ROOT/$name --checkpoint=$which \
    "${RUN_FLAGS[@]}" > $ROOT/$name/evaluate.log 2>&1 &
  PIDS[$entry]=$!
  mark "$name: stopped in training; evaluating its $which checkpoint"
done
while alive && [ $SECONDS -lt $T_EVAL ]; do sleep 3; done
for entry in $RUNS; do
  if kill -0 ${PIDS[$entry]} 2>/dev/null; then
    mark "T_EVAL: stopping ${NAMES[$entry]} (evaluation unfinished; rows.csv holds what was scored)"
    kill -TERM ${PIDS[$entry]}; sleep 1; kill -KILL ${PIDS[$entry]} 2>/dev/null
  fi
done
wait 2>/dev/null
for entry in $RUNS; do
  name=${NAMES[$entry]}
  step=$(tr '\r' '\n' < $ROOT/$name/train.log | grep -o "^step [0-9]*: .*" | tail -1)
  rows=$(for f in $ROOT/$name/eval/*/rows.csv; do [ -f $f ] && echo "$(basename $(dirname $f)) $(( $(wc -l < $f) - 1 )) rows"; done | tr '\n' ' ')
  done_eval=$(ls $ROOT/$name/eval/*/summary.json 2>/dev/null | wc -l)
  mark "$name: last validation '$step'; test: ${rows:-none} (summaries: $done_eval)"
done
# Logs without the progress-bar lines; then one tarball of the small results.
for f in $ROOT/*/train.log $ROOT/*/evaluate.log $ROOT/bench.log $ROOT/render.log; do
  [ -f $f ] && tr '\r' '\n' < $f | grep -v "it/s\]\|ex/s\]\|step/s\]\|s/step\]\|s/it\]\|^ *$" > $f.txt
done
cd $ROOT && tar czf $OUT/nass_pcl_results.tar.gz --exclude=checkpoints --exclude='*.png' \
  --exclude='*.wav' */config.json */study_entry.txt */train_summary.json */logs/metrics.jsonl \
  */eval */*.log.txt bench bench.log.txt render.log.txt 2>/dev/null
mark "packed $(du -k $OUT/nass_pcl_results.tar.gz | cut -f1) KiB"
ls -la $OUT
