#!/usr/bin/env bash
# One accelerator session of the throughput benchmarks (used through the device tool; see
# README "GPU runs"). Usage: STAGES="mono torch variants latency accuracy" bash launch/device_bench.sh
#   mono      JAX step, one-channel model (the PyTorch peer's configuration), + real loader
#   torch     the PyTorch peer (launch/torch_peer.py), eager and torch.compile, bf16 and fp32
#   variants  ild_ipd step per speed variant (MODEL_SETS, ';'-separated), + real loader, profiles
#   latency   forward latency of every configuration, batch 1
#   accuracy  mono trained ACC_STEPS steps in float32 and bfloat16 side by side (val SI-SDRi)
# Figures go to $OUT/h100/results.{jsonl,md}; profiles to $OUT/profiles.tar.gz. Each stage has
# its own timeout, so one slow stage costs only itself. All five stages need ~17 minutes: use
# two calls, STAGES="mono torch variants" and STAGES="latency accuracy".
set -u
STAGES=${STAGES:-mono torch variants latency accuracy}
MODEL_SETS=${MODEL_SETS:-";scan_blocks=True,remat=dots;norm_impl=fused,scan_blocks=True,remat=dots"}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
W=$OUT/h100; mkdir -p $W /tmp/prof
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
DATA="--config.data.num_examples.train=1024 --config.data.num_examples.val=128 --config.data.num_examples.test=16 --config.data.num_rooms=8 --config.data.loader=grain --config.data.host_audio_dtype=float16 --config.data.loader_workers=4"
STEP="launch/benchmark.py --what=step --batch_sizes=16 --steps=20 --workdir=$W --profile_dir=/tmp/prof --e2e_steps=40"
has() { [[ " $STAGES " == *" $1 "* ]]; }
stamp() { echo "[$(date +%T)] $*"; }
stamp render; python3 launch/render.py --config=configs/mono.py:gpu $DATA 2>&1 | tail -2
if has mono; then stamp mono; timeout 200 python3 $STEP --config=configs/mono.py:gpu $DATA --step_configs=mono 2>&1 | grep -v Warning | tail -3; fi
if has torch; then stamp torch; timeout 300 python3 launch/torch_peer.py --dtype=both --modes=eager,compile --workdir=$W 2>&1 | tail -6; fi
if has variants; then
  IFS=';' read -ra SETS <<< "$MODEL_SETS"
  for m in "${SETS[@]}"; do stamp "ild_ipd [$m]"; timeout 150 python3 $STEP --config=configs/ild_ipd.py:gpu $DATA --step_configs=ild_ipd --model_set="$m" 2>&1 | grep -v Warning | tail -2; done
fi
if has latency; then stamp latency; timeout 300 python3 launch/benchmark.py --what=latency --step_configs=mono,unilateral,bilateral,ipd,ild,ild_ipd,ipd_af --steps=20 --config=configs/ild_ipd.py:gpu --workdir=$W 2>&1 | tail -2; fi
if has accuracy; then
  stamp accuracy
  for dtype in float32 bfloat16; do
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.4 timeout 300 python3 launch/train.py --config=configs/mono.py:gpu $DATA --workdir=/tmp/acc_$dtype \
      --config.model.dtype=$dtype --config.train.num_steps=${ACC_STEPS:-400} --config.train.eval_every=200 \
      --config.train.eval_batches=8 --config.eval.max_examples=1 --config.eval.metrics="('sisdr',)" >/tmp/acc_$dtype.log 2>&1 &
  done
  wait; for dtype in float32 bfloat16; do mkdir -p $W/acc_$dtype; cp /tmp/acc_$dtype/logs/metrics.jsonl /tmp/acc_$dtype/train_summary.json $W/acc_$dtype/ 2>/dev/null; grep -i "val\|error" /tmp/acc_$dtype.log | tail -3; done
fi
stamp done; tar czf $OUT/profiles.tar.gz -C /tmp prof; ls -la $OUT $W
