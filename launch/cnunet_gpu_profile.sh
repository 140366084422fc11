#!/usr/bin/env bash
# Issue 18: where a CNUNet training step's GPU time and compile time go (one accelerator call).
# For each CASE "rung:flags" in CASES (rungs cnunet_real_sb, cnunet_complex_sb, cnunet_tb at
# :gpu, the authors' widths; flags "xla" = XLA as shipped, "noautotune" =
# --xla_gpu_autotune_level=0, i.e. cuDNN's heuristic algorithm instead of timing each
# candidate), one process times compile + first step and the step on a synthetic batch
# (launch/benchmark.py --what=step, batch BATCH) and, with PROFILE=1, writes a 3-step
# jax.profiler trace for launch/profile_summary.py. Cases run one after another, never side
# by side (side by side, call 1 stalled), each at most CASE_LIMIT s, all within DEADLINE s.
# Usage: WHEELS=build/cn_wheels bash launch/cnunet_gpu_profile.sh  (carry build/cn_wheels)
#   CASES="cnunet_tb:xla,cnunet_real_sb:noautotune,..." BATCH=16 STEPS=20
#   TRAIN_STEPS=N: the step of a run of N training steps (the schedule is part of the program),
#   so on a warm machine after `cnunet_device.sh N` the compilation cache serves it (measured
#   on CPU: a hit only with the same train.num_steps and the loader's float16 batch).
#   Results: $OUT/profile_results.jsonl, $OUT/profile_logs.tar.gz, $OUT/traces_<case>.tar.gz.
set -u
OUT=${OUT:-/tmp/cn_profile_out}
ROOT=${CN_DIR:-/tmp/cn_profile}
DEADLINE=${DEADLINE:-560}
CASE_LIMIT=${CASE_LIMIT:-240}
BATCH=${BATCH:-16}
STEPS=${STEPS:-20}
PROFILE=${PROFILE:-1}
CASES=${CASES:-cnunet_tb:xla,cnunet_complex_sb:xla,cnunet_real_sb:xla}   # noautotune: no faster (call 2)
mkdir -p $OUT $ROOT
source launch/device_env.sh
stamp() { echo "[profile $(date +%T) ${SECONDS}s] $*" | tee -a $ROOT/profile.log; }
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee -a $ROOT/profile.log

for case in ${CASES//,/ }; do
  rung=${case%%:*}; flagset=${case#*:}
  case $flagset in
    xla) flags="" ;;
    noautotune) flags="--xla_gpu_autotune_level=0" ;;
    *) stamp "unknown flag set $flagset (xla | noautotune)"; continue ;;
  esac
  left=$(( DEADLINE - 20 - SECONDS )); limit=$CASE_LIMIT; (( left < limit )) && limit=$left
  (( limit < 30 )) && { stamp "no time left for $case"; break; }
  stamp "$case (XLA_FLAGS='$flags', at most $limit s)"
  XLA_FLAGS="$flags" timeout $limit python3 launch/benchmark.py --what=step --step_configs=$rung \
    --batch_sizes=$BATCH --steps=$STEPS --config=configs/$rung.py:gpu \
    ${TRAIN_STEPS:+--config.train.num_steps=$TRAIN_STEPS} \
    ${PROFILE:+$([ "$PROFILE" = 1 ] && echo --profile_dir=$ROOT/traces_${rung}_$flagset)} \
    --workdir=$ROOT/bench_${rung}_$flagset > $ROOT/${rung}_$flagset.log 2>&1 \
    || stamp "$case: exit $? (timeout 124)"
  grep "compiled and first step\|back to back" $ROOT/${rung}_$flagset.log | tee -a $ROOT/profile.log
  cat $ROOT/bench_${rung}_$flagset/results.jsonl 2>/dev/null | sed "s/}\$/, \"flag_set\": \"$flagset\"}/" >> $OUT/profile_results.jsonl
  if [ -d $ROOT/traces_${rung}_$flagset ]; then
    (cd $ROOT && tar czf $OUT/traces_${rung}_$flagset.tar.gz traces_${rung}_$flagset)
    [ $(stat -c %s $OUT/traces_${rung}_$flagset.tar.gz) -gt 15000000 ] && \
      { stamp "trace of $case over 15 MB: not returned"; rm $OUT/traces_${rung}_$flagset.tar.gz; }
  fi
done
for f in $ROOT/*.log; do tr '\r' '\n' < $f | grep -v "it/s\]\|step/s\]" > $f.clean; mv $f.clean $f; done
(cd $ROOT && tar czf $OUT/profile_logs.tar.gz *.log)
ls -la $OUT; stamp done
