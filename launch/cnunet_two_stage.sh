#!/usr/bin/env bash
# CNUNet (seed 003) two-stage training end to end, one command:
#   1. render the data once (ROOT/data), shared by every step below;
#   2. train the substitute teacher (launch/cnunet_teacher.py: NOT WavLM, a non-causal speech
#      encoder trained here on the clean targets of the training split alone);
#   3. train stage 1 (configs/cnunet_tb_stage1.py: teacher embeddings of the clean target
#      fused after encoder stage 6), then evaluate it on the test split WITH the clean target
#      (eval.oracle_train_inputs: rows and summary say "oracle teacher input") in the
#      background, beside steps 4-5;
#   4. store its bottleneck latents for every train / val utterance (launch/cnunet_latents.py);
#   5. train stage 2 (configs/cnunet_tb_ts.py: spectral loss + 0.05 latent replication of the
#      stored latents; teacher-free) and evaluate it on the test split (deployable).
# With PRECOMPILE=1 stage 2's training step is compiled while stage 1 trains (launch/benchmark.py
# --what=step builds the trainer's very program from shapes alone: no latents needed), so the
# compilation cache (JAX_COMPILATION_CACHE_DIR) serves stage 2 when it starts.
# Usage: VARIANT=smoke ROOT=/tmp/cn_two_stage bash launch/cnunet_two_stage.sh
#   SETS="--config.x=y ..."  extra overrides for every step (data sizes, steps, batch size);
#   TEACHER_STEPS / TEACHER_BATCH  the teacher's steps and batch (default 200 / 8);
#   TEACHER_SETTINGS           teachers.SubstituteSettings fields, e.g. "dim=64,layers=3";
#   PY                          the python (default python3);
#   DATA                        the shards folder (default ROOT/data; rendered if missing);
#   STOP_FILE                   when this file exists, no further step starts (exit 3).
# Each step's output goes to ROOT/<step>.log; a failed step stops the script (exit 1). Rerunning
# on the same ROOT resumes: a finished teacher, latents and stage are kept, the trainings resume.
set -u
VARIANT=${VARIANT:-smoke}
ROOT=${ROOT:-/tmp/cn_two_stage}
PY=${PY:-python3}
SETS=${SETS:-}
mkdir -p $ROOT
DATA=${DATA:-$ROOT/data}
STOP_FILE=${STOP_FILE:-$ROOT/STOP}
COMMON="--config.data.shards_dir=$DATA $SETS"
S1="--config=configs/cnunet_tb_stage1.py:$VARIANT $COMMON --config.model.teacher_path=$ROOT/teacher.npz"
S2="--config=configs/cnunet_tb_ts.py:$VARIANT $COMMON"
step() {  # step NAME command...
  local name=$1; shift
  [ -e "$STOP_FILE" ] && { echo "[two-stage] $STOP_FILE exists: $name not started"; exit 3; }
  echo "[two-stage] $name (at ${SECONDS} s)"
  if ! "$@" > $ROOT/$name.log 2>&1; then
    echo "[two-stage] $name FAILED; the end of $ROOT/$name.log:"; tail -25 $ROOT/$name.log; exit 1
  fi
  summary $ROOT/$name.log
}
summary() { grep -v "it/s\]\|ex/s\]\|step/s\]\|Warning\|warn(" $1 | tr '\r' '\n' | grep -v "^\s*$" | tail -${TAIL:-4}; }
# What a rerun keeps: the teacher file and latents.json are written atomically and last.
done_already() { [ -e "$1" ] && kept "$2 ($1 exists)"; }
trained() {  # a training run that ended (not stopped)
  [ -e $1/train_summary.json ] && ! grep -q '"interrupted": true' $1/train_summary.json
}
kept() { echo "[two-stage] $1: kept (at ${SECONDS} s)"; }
evaluated() {  # the test evaluation of the run's best checkpoint was written
  local best=$(PYTHONPATH= $PY -c "import json,sys; print(json.load(open(sys.argv[1]))['best']['step'])" \
    $1/train_summary.json 2>/dev/null)
  [ -n "$best" ] && ls $1/eval/test-best-step$best/summary.json >/dev/null 2>&1
}

step render $PY launch/render.py --config=configs/cnunet_tb_stage1.py:$VARIANT $COMMON --workdir=$DATA
if [ "${PRECOMPILE:-0}" = 1 ] && ! trained $ROOT/stage2; then
  echo "[two-stage] stage 2's training step compiling in the background (at ${SECONDS} s)"
  XLA_PYTHON_CLIENT_PREALLOCATE=false $PY launch/benchmark.py --what=step \
    --step_configs=cnunet_tb_ts --batch_sizes=config --steps=1 $S2 \
    --workdir=$ROOT/precompile_stage2 > $ROOT/precompile_stage2.log 2>&1 &
  PRECOMPILE_PID=$!
fi
done_already $ROOT/teacher.npz teacher ||
step teacher $PY launch/cnunet_teacher.py $S1 --steps=${TEACHER_STEPS:-200} \
  --batch_size=${TEACHER_BATCH:-8} --settings=${TEACHER_SETTINGS:-} --out=$ROOT/teacher.npz
{ trained $ROOT/stage1 && kept "stage1 (trained)"; } ||
step stage1 $PY launch/train.py $S1 --workdir=$ROOT/stage1 --config.eval.after_training=False
if [ ! -e "$STOP_FILE" ] && trained $ROOT/stage1 && ! evaluated $ROOT/stage1; then
  echo "[two-stage] stage1 test evaluation (oracle teacher input) in the background (at ${SECONDS} s)"
  XLA_PYTHON_CLIENT_PREALLOCATE=false $PY launch/evaluate.py $S1 --workdir=$ROOT/stage1 \
    --checkpoint=best > $ROOT/stage1_eval.log 2>&1 &
  EVAL1_PID=$!
fi
done_already $ROOT/latents/latents.json latents ||
step latents $PY launch/cnunet_latents.py $S1 --workdir=$ROOT/stage1 --out=$ROOT/latents
if [ -n "${PRECOMPILE_PID:-}" ]; then
  wait $PRECOMPILE_PID && echo "[two-stage] $(grep -o "compiled and first step in [0-9.]* s" \
    $ROOT/precompile_stage2.log | head -1) (stage 2 precompile, at ${SECONDS} s)" ||
    echo "[two-stage] stage 2 precompile failed (stage 2 compiles itself): $(tail -1 $ROOT/precompile_stage2.log)"
fi
{ trained $ROOT/stage2 && evaluated $ROOT/stage2 && kept "stage2 (trained and evaluated)"; } ||
step stage2 $PY launch/train.py $S2 --config.data.cnunet_latents=$ROOT/latents --workdir=$ROOT/stage2
if [ -n "${EVAL1_PID:-}" ]; then
  if wait $EVAL1_PID; then echo "[two-stage] stage1 evaluation:"; summary $ROOT/stage1_eval.log
  else echo "[two-stage] stage1 evaluation FAILED:"; tail -25 $ROOT/stage1_eval.log; exit 1; fi
fi
echo "[two-stage] done at ${SECONDS} s: $ROOT/stage1/eval (oracle teacher input), $ROOT/stage2/eval"
