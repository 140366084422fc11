#!/usr/bin/env bash
# One accelerator session of the throughput benchmarks (used through the device tool; see
# README "GPU runs"). Usage: STAGES="mono torch variants latency accuracy" bash launch/device_bench.sh
#   mono      JAX step, one-channel model (the PyTorch peer's configuration), + real loader;
#             bytes moved per global layer norm implementation (XLA's cost model)
#   torch     the PyTorch peer (launch/torch_peer.py), eager and torch.compile, bf16 and fp32
#   ipd       configs/ipd.py:gpu (step + real loader) and its PyTorch counterpart, the study's
#             2 ch + IPD model, in the same call (IPD_TORCH_RUNS: ';'-separated argument sets)
#   variants  ild_ipd step per speed variant (MODEL_SETS, ';'-separated), + real loader, profiles
#   latency   forward latency of every configuration, batch 1
#   accuracy  mono trained ACC_STEPS steps in float32 and bfloat16 side by side (val SI-SDRi)
#   kernel_accuracy  ild_ipd:gpu (bf16) trained ACC_STEPS steps with the XLA U-ConvBlock, then
#             with model.uconv_impl=pallas, same seed, data and batch order; each scored on
#             the same ACC_TEST test mixtures (launch/kernel_accuracy.py pairs them)
#   kernels   the Pallas U-ConvBlock kernels on the GPU against XLA (errors of values and
#             gradients vs float32, fwd + bwd times per tile shape; benchmark.py --what=uconv_kernels)
#   scaling   ild_ipd step + real loader on 1 GPU, then on every GPU: 16 per GPU, and global 64
#             (SCALING_SET: model.* overrides; default the scanned layout, which compiles in
#             seconds, so two batch sizes with their loader-fed recompiles fit the stage)
# Figures go to $OUT/$BENCH_NAME/results.{jsonl,md} (BENCH_NAME default h100); profiles to
# $OUT/profiles.tar.gz. Each stage has its own timeout and the call a deadline (DEADLINE s), so one slow stage costs only itself;
# progress goes to $OUT/stages.log as it comes. Split the stages over two or three calls.
# The loader-fed timing compiles the step again (other input dtypes): an unrolled variant
# takes ~300 s with it; E2E_STEPS=0 skips it.
set -u
STAGES=${STAGES:-mono torch variants latency accuracy}
# '' is the gpu variant as configured (fused norms, 3 of 16 blocks rematerialised); then
# every block's activations kept, and the scanned layout (fast compile, low memory).
MODEL_SETS=${MODEL_SETS:-";remat=none;scan_blocks=True,remat=dots,remat_blocks=-1"}
DEADLINE=${DEADLINE:-570}   # seconds this call may use; a stage gets at most what is left
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ${WHEELS:-.whl}/*.whl || exit 1
# Compiling the unrolled 16-block models takes XLA ~45 s per program on this host: programs
# compiled by one process are reused by the next through the persistent cache.
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache
W=$OUT/${BENCH_NAME:-h100}; LOG=$OUT/stages.log; mkdir -p $W /tmp/prof
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
DATA="--config.data.num_examples.train=1024 --config.data.num_examples.val=128 --config.data.num_examples.test=16 --config.data.num_rooms=8 --config.data.loader=grain --config.data.host_audio_dtype=float16 --config.data.loader_workers=4"
STEP="launch/benchmark.py --what=step --batch_sizes=16 --steps=20 --workdir=$W --profile_dir=/tmp/prof --e2e_steps=${E2E_STEPS:-40} ${STEP_FLAGS:-}"
has() { [[ " $STAGES " == *" $1 "* ]]; }
stamp() { echo "[$(date +%T)] $*" | tee -a $LOG; }
# run_stage SECONDS command...: the command's whole output goes to $LOG as it comes.
run_stage() {
  local limit=$1; shift
  local left=$(( DEADLINE - SECONDS - 20 ))
  (( left < limit )) && limit=$left
  if (( limit < 30 )); then stamp "skipped (${left} s left): $*"; return; fi
  timeout $limit "$@" 2>&1 | grep --line-buffered -v "Warning\|warnings.warn" | tee -a $LOG
}
# Rendered data is needed by the loader-fed timings, the accuracy runs and the scaling stage.
if [[ "${E2E_STEPS:-40}" != 0 ]] || has accuracy || has scaling; then
  stamp render; python3 launch/render.py --config=configs/mono.py:gpu $DATA 2>&1 | tail -2
fi
if has kernel_accuracy; then
  # One after the other (side by side, both stalled after their first step in an earlier
  # call); each evaluates its best checkpoint on the same ACC_TEST test mixtures (SI-SDR, SDR),
  # so the two can be compared example by example (launch/kernel_accuracy.py).
  ACC_DATA="${DATA/num_examples.test=16/num_examples.test=${ACC_TEST:-256}}"
  for impl in ${ACC_IMPLS:-xla pallas}; do
    stamp "kernel_accuracy $impl"
    run_stage ${ACC_LIMIT:-240} python3 launch/train.py --config=configs/ild_ipd.py:gpu $ACC_DATA --workdir=/tmp/kacc_$impl \
      --config.model.uconv_impl=$impl --config.train.num_steps=${ACC_STEPS:-400} --config.train.eval_every=$(( ${ACC_STEPS:-400} / 4 )) \
      --config.train.checkpoint_every=$(( ${ACC_STEPS:-400} / 4 )) --config.train.eval_batches=8 --config.eval.compare_pretrained=False \
      "--config.eval.metrics=('sisdr','sdr')" "--config.eval.oracles=()" --config.eval.vocoder=False --config.eval.save_examples=0 \
      --config.eval.max_examples=0 > /tmp/kacc_$impl.log 2>&1
    mkdir -p $W/kacc_$impl
    cp /tmp/kacc_$impl/logs/metrics.jsonl /tmp/kacc_$impl/train_summary.json $W/kacc_$impl/ 2>/dev/null
    cp /tmp/kacc_$impl/eval/test-best-*/rows.csv /tmp/kacc_$impl/eval/test-best-*/summary.json $W/kacc_$impl/ 2>/dev/null
    grep -i "step \|val\|error\|Traceback" /tmp/kacc_$impl.log | tail -12
  done
fi
if has kernels; then
  stamp kernels; run_stage 240 python3 launch/benchmark.py --what=uconv_kernels --workdir=$W
fi
if has mono; then
  stamp mono; run_stage 240 python3 $STEP --config=configs/mono.py:gpu $DATA --step_configs=mono
  run_stage 60 python3 launch/benchmark.py --what=norm_cost --workdir=$W
fi
if has torch; then
  # TORCH_RUNS: ';'-separated argument sets, one torch_peer.py process each
  IFS=';' read -ra RUNS <<< "${TORCH_RUNS:---dtype=both --modes=eager,compile}"
  for r in "${RUNS[@]}"; do stamp "torch $r"; run_stage 420 python3 launch/torch_peer.py $r --workdir=$W; done
fi
if has ipd; then
  stamp ipd; run_stage 240 python3 $STEP --config=configs/ipd.py:gpu $DATA --step_configs=ipd
  IFS=';' read -ra RUNS <<< "${IPD_TORCH_RUNS:---input_channels=2 --features=ipd --dtype=bf16 --modes=eager,compile;--input_channels=2 --features=ipd --ipd_source=input --dtype=bf16 --modes=eager}"
  for r in "${RUNS[@]}"; do stamp "torch $r"; run_stage 300 python3 launch/torch_peer.py $r --workdir=$W; done
fi
if has variants; then
  IFS=';' read -ra SETS <<< "$MODEL_SETS"
  for m in "${SETS[@]}"; do
    stamp "ild_ipd [$m]"; tag=${m//[=,]/_}
    # The optimised HLO of the step names the fusions the profile times ($OUT/hlo.tar.gz).
    XLA_FLAGS="--xla_dump_to=/tmp/hlo/${tag:-default} --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*train_step.*" \
      run_stage 330 python3 $STEP --config=configs/ild_ipd.py:gpu $DATA --step_configs=ild_ipd --model_set="$m"
  done
fi
if has latency; then
  LATENCY_CONFIGS=${LATENCY_CONFIGS:-mono,unilateral,bilateral,ipd,ild,ild_ipd,ipd_af}
  stamp "latency: compiling $LATENCY_CONFIGS in parallel into the cache"
  for c in ${LATENCY_CONFIGS//,/ }; do
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.1 run_stage 200 python3 launch/benchmark.py --what=latency --step_configs=$c --steps=1 --config=configs/ild_ipd.py:gpu --workdir=/tmp/latency_warmup >/dev/null &
  done; wait
  stamp "latency: timing"
  run_stage 240 python3 launch/benchmark.py --what=latency --step_configs=$LATENCY_CONFIGS --steps=20 --config=configs/ild_ipd.py:gpu --workdir=$W
fi
if has accuracy; then
  stamp accuracy
  for dtype in float32 bfloat16; do
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.4 run_stage 300 python3 launch/train.py --config=configs/mono.py:gpu $DATA --workdir=/tmp/acc_$dtype \
      --config.model.dtype=$dtype --config.train.num_steps=${ACC_STEPS:-400} --config.train.eval_every=200 \
      --config.train.eval_batches=8 --config.eval.max_examples=1 --config.eval.metrics="('sisdr',)" >/tmp/acc_$dtype.log &
  done
  wait; for dtype in float32 bfloat16; do mkdir -p $W/acc_$dtype; cp /tmp/acc_$dtype/logs/metrics.jsonl /tmp/acc_$dtype/train_summary.json $W/acc_$dtype/ 2>/dev/null; grep -i "val\|error" /tmp/acc_$dtype.log | tail -3; done
fi
if has scaling; then
  GPUS=$(nvidia-smi -L | wc -l)
  for n in 1 $GPUS; do
    # weak scaling (16 per GPU) and strong scaling (global batch 64)
    stamp "scaling: $n GPU(s), batch $((16 * n)) and 64"
    CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((n - 1))) run_stage 330 python3 $STEP --config=configs/ild_ipd.py:gpu \
      $DATA --config.data.loader_workers=8 --step_configs=ild_ipd --batch_sizes=$((16 * n)),64 \
      --model_set="${SCALING_SET-scan_blocks=True,remat=dots,remat_blocks=-1}"
  done
fi
stamp done; tar czf $OUT/profiles.tar.gz -C /tmp prof
[ -d /tmp/hlo ] && (cd /tmp && find hlo -name "*after_optimizations.txt" | tar czf $OUT/hlo.tar.gz -T -)
ls -la $OUT $W
