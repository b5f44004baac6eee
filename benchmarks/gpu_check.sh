#!/usr/bin/env bash
# The GPU check (issue 21) on one lent GPU: real-size random-weight step, sample, FLOP/s and GRPO
# rollout numbers of ModelScope 256x256x16, AnimateDiff 512x512x16 and Wan2.1-1.3B 33x240x416 against
# their meta-device memory estimates, in at most 8 minutes (benchmarks/gpu_check.py).
# Writes gpu_check.json, gpu_check.md and gpu_check.log to ${OUT:-outputs}/gpu_check ($OUT comes back
# from the device tool). The device image has no diffusers: download its wheel into .whl/ once, here
# (see benchmarks/gpu_dit.sh), and carry [".whl"].
set -u
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
exec python3 -m benchmarks.gpu_check --out "${OUT:-outputs}/gpu_check" "$@"
