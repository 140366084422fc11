#!/usr/bin/env bash
# Issue 18 (CNUNet-TB, seed 003), ONE accelerator call with a hard deadline (DEADLINE s, all
# of it: install, render, training, evaluation, packing):
#   1. renders one noisy 16 kHz dataset (one talker in diffuse noise, 0-15 dB SNR,
#      room-disjoint train / val / test), shared by every run;
#   2. trains the ladder side by side on the one GPU at equal budgets (same seed, data,
#      batches, STEPS steps): RUNGS (cnunet_real_sb, cnunet_complex_sb, cnunet_tb), and with
#      TWO_STAGE=1 the chain launch/cnunet_two_stage.sh beside them: the substitute teacher
#      (NOT WavLM), stage 1 (cnunet_tb_stage1, STEPS steps, scored with the clean target:
#      "oracle teacher input"), its latents, stage 2 (cnunet_tb_ts, STEPS steps, teacher-free);
#   3. each run evaluates its best-by-validation checkpoint on the test split (SI-SDR, STOI,
#      ESTOI, segSNR; PESQ and CSIG/CBAK/COVL where the pesq package is installed);
#   4. meanwhile measures the streaming real-time factor on ONE isolated CPU core (core
#      RTF_CORE, which no other process of this script uses) at the authors' widths, two-branch
#      and single-branch;
#   5. at DEADLINE - STOP_MARGIN still-training runs are stopped (they checkpoint) and their
#      best checkpoints evaluated; the small results are packed into $OUT/cnunet_results.tar.gz.
# Usage: bash launch/cnunet_device.sh [STEPS]
#   VARIANT=smoke SKIP_WHEELS=1 OUT=/tmp/cn_dry_out for a CPU dry run (any small sizes); RUNGS=,
#   (no ladder run: the two-stage chain alone, e.g. to resume it);
#   NTRAIN NVAL NTEST ROOMS SEGMENT  data sizes; BATCH; EVAL_EVERY; MODEL_SETS (extra
#   --config.model.* overrides for every run, e.g. a smaller depth); RUNG_SETS (overrides for
#   the ladder rungs only, not the chain nor the data: e.g. --config.train.seed=43 trains the
#   ladder on another training seed beside the chain); TEACHER_STEPS;
#   PRECOMPILE=0 lets stage 2 compile its own step (default 1: compiled beside stage 1);
#   EVAL_STOPPED=0 does not evaluate runs stopped by the deadline (a next call on the still-warm
#   machine, same ROOT, resumes them and the chain, and they evaluate themselves);
#   SAVE_ESTIMATES=True keeps every test estimate (eval/*/estimates/, FLAC) in the results, for
#   the metrics the GPU host cannot compute (DNSMOS; PESQ where it did not build): rescore them
#   here with launch/evaluate.py --estimates=<eval folder>/estimates.
set -u
STEPS=${1:-300}
DEADLINE=${DEADLINE:-540}
STOP_MARGIN=${STOP_MARGIN:-150}     # seconds before DEADLINE at which training stops
VARIANT=${VARIANT:-gpu}
RUNGS=${RUNGS:-cnunet_real_sb,cnunet_complex_sb,cnunet_tb}
TWO_STAGE=${TWO_STAGE:-1}; [ "$TWO_STAGE" = 0 ] && TWO_STAGE=""
ROOT=${CN_DIR:-/tmp/cn}
OUT=${OUT:-/tmp/cn_out}
NCPU=$(nproc)
RTF_CORE=${RTF_CORE:-$(( NCPU - 1 ))}
WORK_CORES=${WORK_CORES:-0-$(( NCPU > 1 ? NCPU - 2 : 0 ))}
mkdir -p $OUT $ROOT
rm -f $ROOT/two_stage/STOP   # left by an earlier call on this (warm) machine: the chain resumes
LOG=$ROOT/device.log
stamp() { echo "[cnunet $(date +%T) ${SECONDS}s] $*" | tee -a $LOG; }
source launch/device_env.sh   # wheels (+ pesq from its sdist), cache, checkout on PYTHONPATH
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" 2>&1 | tee -a $LOG
python3 -c "import pesq" 2>/dev/null && HAVE_PESQ=1 || HAVE_PESQ=""
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee -a $LOG
PRECOMPILE=${PRECOMPILE:-1}   # the chain compiles stage 2's step while stage 1 trains
# GPU processes at once: each rung; the chain 1, or 2 with its stage-2 precompile (its stage-1
# evaluation runs later, beside the latents, and allocates on demand within the same share).
NUM=$(( $(echo "$RUNGS" | tr ',' '\n' | grep -c .) + $([ -n "$TWO_STAGE" ] && echo $(( 1 + PRECOMPILE )) || echo 0) ))
export XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-$(python3 -c "print(round(0.9 / $NUM, 3))")}
if [ -n "$HAVE_PESQ" ]; then METRICS="('sisdr','stoi','estoi','pesq','segsnr','composite')"
else METRICS="('sisdr','stoi','estoi','segsnr')"; fi
DATA=$ROOT/data
SETS="--config.data.shards_dir=$DATA --config.data.num_examples.train=${NTRAIN:-800}
 --config.data.num_examples.val=${NVAL:-32} --config.data.num_examples.test=${NTEST:-100}
 --config.data.num_rooms=${ROOMS:-16} --config.data.segment_seconds=${SEGMENT:-2.0}
 --config.train.num_steps=$STEPS --config.train.batch_size=${BATCH:-16}
 --config.train.eval_every=${EVAL_EVERY:-50} --config.train.checkpoint_every=${EVAL_EVERY:-50}
 --config.train.eval_batches=${EVAL_BATCHES:-2} --config.eval.metrics=$METRICS
 --config.eval.num_workers=${EVAL_WORKERS:-3} --config.eval.save_examples=${SAVE_EXAMPLES:-4} --config.eval.save_estimates=${SAVE_ESTIMATES:-False}
 --config.eval.compare_pretrained=False ${MODEL_SETS:-}"
SETS=$(echo $SETS)
stamp "variant $VARIANT, $STEPS steps, runs: $RUNGS${TWO_STAGE:+ + two-stage chain}, mem fraction $XLA_PYTHON_CLIENT_MEM_FRACTION, pesq ${HAVE_PESQ:-absent}, work cores $WORK_CORES, RTF core $RTF_CORE, deadline $DEADLINE s, rung sets '${RUNG_SETS:-}', XLA_FLAGS '${XLA_FLAGS:-}'"

# 4. The one-core streaming RTF (CPU only, its own core), while the GPU trains.
(
  for rung in cnunet_tb cnunet_complex_sb; do   # each at most RTF_LIMIT s (compile included)
    left=$(( DEADLINE - 30 - SECONDS )); limit=${RTF_LIMIT:-230}; (( left < limit )) && limit=$left
    (( limit < 20 )) && break
    timeout $limit taskset -c $RTF_CORE python3 launch/cnunet_measure.py \
      --variant=$VARIANT --rungs= --rtf=$rung --rtf_seconds=${RTF_SECONDS:-3} --out=$ROOT/rtf/$rung.json \
      > $ROOT/rtf_$rung.log 2>&1 || echo "[rtf] $rung: exit $?" >> $ROOT/rtf_$rung.log
  done
) &
RTF_PID=$!

# 1. Render (every core but the RTF core).
stamp render
timeout $(( DEADLINE - STOP_MARGIN - SECONDS )) taskset -c $WORK_CORES python3 launch/render.py \
  --config=configs/cnunet_tb.py:$VARIANT $SETS --workdir=$DATA --num_workers=$(( NCPU > 1 ? NCPU - 1 : 1 )) \
  > $ROOT/render.log 2>&1 || { stamp "render failed"; tail -20 $ROOT/render.log; }
tail -4 $ROOT/render.log | tee -a $LOG

# 2. + 3. Training (and each run's test evaluation when it ends in time).
declare -A PIDS=() STOP_PID=()   # set (empty) arrays: RUNGS=, leaves PIDS empty under set -u
for rung in ${RUNGS//,/ }; do
  taskset -c $WORK_CORES python3 launch/train.py --config=configs/$rung.py:$VARIANT $SETS \
    ${RUNG_SETS:-} --workdir=$ROOT/$rung > $ROOT/$rung.log 2>&1 &
  PIDS[$rung]=$!
done
if [ -n "$TWO_STAGE" ]; then
  VARIANT=$VARIANT ROOT=$ROOT/two_stage DATA=$DATA PY=python3 SETS="$SETS" PRECOMPILE=$PRECOMPILE \
    TEACHER_STEPS=${TEACHER_STEPS:-300} TEACHER_BATCH=${TEACHER_BATCH:-16} TAIL=3 \
    taskset -c $WORK_CORES bash launch/cnunet_two_stage.sh > $ROOT/two_stage.log 2>&1 &
  CHAIN_PID=$!
fi
stamp "started ${#PIDS[@]} runs${TWO_STAGE:+ and the two-stage chain}"
STOP_AT=$(( DEADLINE - STOP_MARGIN ))
while [ $SECONDS -lt $STOP_AT ]; do
  busy=0
  for pid in ${PIDS[@]} ${CHAIN_PID:-}; do kill -0 $pid 2>/dev/null && busy=1; done
  [ $busy = 0 ] && break
  sleep 5
done
stamp "training window over"
# Stop what still trains: the chain starts no further step; a run without train_summary.json
# is still training (SIGTERM: it saves latest/ and exits, skipping its own evaluation).
[ -n "$TWO_STAGE" ] && touch $ROOT/two_stage/STOP
train_pids() {  # trainer processes of this script: children of the run shells / the chain
  for pid in ${PIDS[@]}; do kill -0 $pid 2>/dev/null && echo $pid; done
  [ -n "${CHAIN_PID:-}" ] && pgrep -P $CHAIN_PID
}
for dir in $ROOT/cnunet_* $ROOT/two_stage/stage1 $ROOT/two_stage/stage2; do
  [ -d $dir ] || continue
  [ -e $dir/train_summary.json ] && continue
  for pid in $(train_pids); do
    if tr '\0' ' ' < /proc/$pid/cmdline 2>/dev/null | grep -q -- "--workdir=$dir "; then
      stamp "stopping $(basename $dir) (pid $pid, still training)"; kill -TERM $pid; STOPPED="${STOPPED:-} $pid"
      STOP_PID[$dir]=$pid
    fi
  done
done
for i in $(seq 30); do  # they save latest/ and exit
  alive=""; for pid in ${STOPPED:-}; do kill -0 $pid 2>/dev/null && alive=1; done
  [ -z "$alive" ] && break; sleep 1
done
# Runs whose training stopped early (or whose own evaluation did not start): evaluate best/.
for dir in $ROOT/cnunet_* $ROOT/two_stage/stage1 $ROOT/two_stage/stage2; do
  [ -d $dir/checkpoints ] || continue
  ls $dir/eval/*/summary.json >/dev/null 2>&1 && continue
  if [ -n "${STOP_PID[$dir]:-}" ] && [ "${EVAL_STOPPED:-1}" = 0 ]; then
    stamp "$(basename $dir) stopped, not evaluated (EVAL_STOPPED=0: a later call resumes it)"; continue
  fi
  if [ -n "${STOP_PID[$dir]:-}" ]; then   # stopped above: evaluate once it has saved and exited
    while kill -0 ${STOP_PID[$dir]} 2>/dev/null && [ $SECONDS -lt $(( DEADLINE - 60 )) ]; do sleep 1; done
    kill -0 ${STOP_PID[$dir]} 2>/dev/null && { stamp "$(basename $dir) did not exit after SIGTERM"; continue; }
  else
    running=""
    for pid in $(train_pids); do
      tr '\0' ' ' < /proc/$pid/cmdline 2>/dev/null | grep -q -- "--workdir=$dir " && running=1
    done
    [ -n "$running" ] && continue    # finished training in time: its own evaluation runs
  fi
  case $dir in
    */stage1) config=cnunet_tb_stage1; extra="--config.model.teacher_path=$ROOT/two_stage/teacher.npz" ;;
    */stage2) config=cnunet_tb_ts; extra="--config.data.cnunet_latents=$ROOT/two_stage/latents" ;;
    *) config=$(basename $dir); extra="${RUNG_SETS:-}" ;;
  esac
  which=best; ls $dir/checkpoints/best >/dev/null 2>&1 || which=latest
  stamp "evaluating $(basename $dir) ($which checkpoint)"
  timeout $(( DEADLINE - 30 - SECONDS )) taskset -c $WORK_CORES python3 launch/evaluate.py \
    --config=configs/$config.py:$VARIANT $SETS $extra --workdir=$dir --checkpoint=$which \
    > $dir.evaluate.log 2>&1 &
  EVAL_PIDS="${EVAL_PIDS:-} $!"
done
# Wait for the evaluations: these, and those of runs that finished training in time.
while [ $SECONDS -lt $(( DEADLINE - 28 )) ]; do
  alive=""; for pid in ${EVAL_PIDS:-} $(train_pids); do kill -0 $pid 2>/dev/null && alive=1; done
  [ -z "$alive" ] && break; sleep 3
done
# Whatever still runs now is out of time (own evaluations included): stopped, rows kept.
for pid in $(pgrep -P $$) ${CHAIN_PID:+$(pgrep -P $CHAIN_PID)}; do
  [ "$pid" = "$RTF_PID" ] && continue
  kill -TERM $pid 2>/dev/null
done
kill -TERM $(pgrep -P $RTF_PID) 2>/dev/null
sleep 3
stamp "packing"
for f in $ROOT/*.log $ROOT/two_stage/*.log; do
  [ -e "$f" ] || continue
  tr '\r' '\n' < $f | grep -v "it/s\]\|ex/s\]\|step/s\]" > $f.clean 2>/dev/null; mv $f.clean $f
done
(cd $ROOT && tar czf $OUT/cnunet_results.tar.gz --exclude=checkpoints --exclude=data --exclude='*.npy' \
  --exclude=estimates \
  --exclude=teacher.npz *.log rtf */config.json */train_summary.json */logs/metrics.jsonl */eval \
  two_stage/*.log two_stage/*/config.json two_stage/*/train_summary.json two_stage/*/logs/metrics.jsonl \
  two_stage/*/eval two_stage/latents/latents.json data/manifest.json 2>/dev/null)
for dir in $ROOT/cnunet_* $ROOT/two_stage/stage1 $ROOT/two_stage/stage2; do  # FLAC: no gzip
  ls -d $dir/eval/*/estimates >/dev/null 2>&1 || continue
  name=$(basename $dir); [ $name = stage1 -o $name = stage2 ] && name=two_stage_$name
  (cd $dir && tar cf $OUT/estimates_$name.tar eval/*/estimates eval/*/rows.csv)
done
python3 - <<EOF 2>&1 | tee $OUT/cnunet_summary.txt
import glob, json, os
for path in sorted(glob.glob("$ROOT/**/eval/*/summary.json", recursive=True)):
  s = json.load(open(path))
  o = s["overall"]
  cells = "  ".join(f"{k} {v['mean']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"
                    for k, v in o.items() if k in ("sisdr_improvement", "sisdr", "stoi", "stoi_improvement", "pesq"))
  print(os.path.relpath(path, "$ROOT"), "step", s.get("step"), "n", s["num_examples"], cells,
        "ORACLE TEACHER INPUT" if s.get("oracle_train_inputs") else "")
for path in sorted(glob.glob("$ROOT/rtf/*.json")):
  print(os.path.basename(path), json.dumps(json.load(open(path))))
EOF
ls -la $OUT; stamp "done"
