#!/usr/bin/env bash
# CNUNet (seed 003) two-stage training end to end, one command:
#   1. render the data once (ROOT/data), shared by every step below;
#   2. train the substitute teacher (launch/cnunet_teacher.py: NOT WavLM, a non-causal speech
#      encoder trained here on the clean targets of the training split alone);
#   3. train stage 1 (configs/cnunet_tb_stage1.py: teacher embeddings of the clean target
#      fused after encoder stage 6) and evaluate it on the test split WITH the clean target
#      (eval.oracle_train_inputs: rows and summary say "oracle teacher input");
#   4. store its bottleneck latents for every train / val utterance (launch/cnunet_latents.py);
#   5. train stage 2 (configs/cnunet_tb_ts.py: spectral loss + 0.05 latent replication of the
#      stored latents; teacher-free) and evaluate it on the test split (deployable).
# Usage: VARIANT=smoke ROOT=/tmp/cn_two_stage bash launch/cnunet_two_stage.sh
#   SETS="--config.x=y ..."  extra overrides for every step (data sizes, steps, batch size);
#   TEACHER_STEPS / TEACHER_BATCH  the teacher's steps and batch (default 200 / 8);
#   TEACHER_SETTINGS           teachers.SubstituteSettings fields, e.g. "dim=64,layers=3";
#   PY                          the python (default python3);
#   DATA                        the shards folder (default ROOT/data; rendered if missing);
#   STOP_FILE                   when this file exists, no further step starts (exit 3).
# Each step's output goes to ROOT/<step>.log; a failed step stops the script (exit 1). Rerunning
# on the same ROOT resumes: a finished teacher and latents are kept, the trainings resume.
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
step() {  # step NAME command...
  local name=$1; shift
  [ -e "$STOP_FILE" ] && { echo "[two-stage] $STOP_FILE exists: $name not started"; exit 3; }
  echo "[two-stage] $name (at ${SECONDS} s)"
  if ! "$@" > $ROOT/$name.log 2>&1; then
    echo "[two-stage] $name FAILED; the end of $ROOT/$name.log:"; tail -25 $ROOT/$name.log; exit 1
  fi
  grep -v "it/s\]\|ex/s\]\|step/s\]\|Warning\|warn(" $ROOT/$name.log | tr '\r' '\n' | grep -v "^\s*$" | tail -${TAIL:-4}
}
step render $PY launch/render.py --config=configs/cnunet_tb_stage1.py:$VARIANT $COMMON --workdir=$DATA
# A rerun (a resumed call) skips what is complete: the teacher file and latents.json are written
# atomically and last; the two trainings resume from their checkpoints.
done_already() { [ -e "$1" ] && echo "[two-stage] $2: $1 exists, kept (at ${SECONDS} s)"; }
done_already $ROOT/teacher.npz teacher ||
step teacher $PY launch/cnunet_teacher.py $S1 --steps=${TEACHER_STEPS:-200} \
  --batch_size=${TEACHER_BATCH:-8} --settings=${TEACHER_SETTINGS:-} --out=$ROOT/teacher.npz
finished() {  # a training run that ended (not stopped) and whose test evaluation was written
  [ -e $1/train_summary.json ] && ! grep -q '"interrupted": true' $1/train_summary.json &&
    ls $1/eval/*/summary.json >/dev/null 2>&1 && echo "[two-stage] $2: trained and evaluated, kept"
}
finished $ROOT/stage1 stage1 ||
step stage1 $PY launch/train.py $S1 --workdir=$ROOT/stage1
done_already $ROOT/latents/latents.json latents ||
step latents $PY launch/cnunet_latents.py $S1 --workdir=$ROOT/stage1 --out=$ROOT/latents
finished $ROOT/stage2 stage2 ||
step stage2 $PY launch/train.py --config=configs/cnunet_tb_ts.py:$VARIANT $COMMON \
  --config.data.cnunet_latents=$ROOT/latents --workdir=$ROOT/stage2
echo "[two-stage] done at ${SECONDS} s: $ROOT/stage1/eval (oracle teacher input), $ROOT/stage2/eval"
