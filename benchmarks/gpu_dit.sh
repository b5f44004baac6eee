#!/usr/bin/env bash
# Issue 19 on one lent GPU: time and peak memory of a real-size (random-weight) reward-gradient
# step of Wan2.1-T2V-1.3B and CogVideoX-2B at the peers' settings (benchmarks/real_size_step.py;
# the T5 text encoders are stand-ins, outside the numbers). About 6-8 minutes on an H100, held
# under 570 s in all (BUDGET) so that one device command of 600 s holds it.
#
# The device image has no diffusers. Once, here, in the repo root (.whl/ is git-ignored):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1
# then the device tool's run with command "bash benchmarks/gpu_dit.sh", carry [".whl"], timeout_s 600.
# Prints everything; the log and one JSON per run go to ${OUT:-outputs}/gpu_dit ($OUT comes back).
set -u
export PYTHONUNBUFFERED=1
out=${OUT:-outputs}/gpu_dit
mkdir -p "$out"
exec > >(tee "$out/gpu_dit.log") 2>&1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, diffusers, transformers, peft; print('torch', torch.__version__, 'diffusers', \
diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" || exit 1
deadline=$((SECONDS + ${BUDGET:-570}))

run_step() {  # NAME SECONDS ARGS...: one benchmark under min(SECONDS, what is left); its status
    local name=$1 limit=$2 left=$((deadline - SECONDS)); shift 2
    ((left < limit)) && limit=$left
    ((limit < 30)) && { echo "=== $name: skipped, ${left} s left"; return 124; }
    echo "=== $name ($limit s at most): python3 -m benchmarks.real_size_step $*"
    timeout "$limit" python3 -m benchmarks.real_size_step --json "$out/$name.json" "$@"
    local rc=$?
    ((rc == 124)) && echo "=== $name: stopped after $limit s"
    return $rc
}

# Flow-GRPO's Wan2.1 sampling settings (wan's defaults: 33x240x416, T=20, guidance 4.5, K=1),
# every frame decoded with gradients, as a reward on the whole video needs (estimated 38 GiB).
run_step wan_flowgrpo 150 --backbone wan --reward-frames all
# VideoX-Fun's reward-backprop LoRA on Wan: 81x256x256, T=30, guidance 6, K=5, frame 0 decoded.
run_step wan_videoxfun 150 --backbone wan --frames 81 --height 256 --width 256 --steps 30 \
    --guidance 6 --k 5 --decode-frames 0 --repeat 2
# CogVideoX-2B as released (cogvideox_2b's defaults: 49x480x720, T=50, guidance 6, K=1), frame 0
# decoded (3 latent frames, 9 frames, with gradients): estimated 71 GiB before the allocator's
# share. Out of memory (status 3), once more with the VAE's own blocks checkpointed (estimated
# 20 GiB; the trainer does not do this, and the header line says so).
run_step cogvideox_2b 240 --backbone cogvideox_2b --decode-frames 0 --repeat 1
if (($? == 3)); then
    run_step cogvideox_2b_vae_ckpt 240 --backbone cogvideox_2b --decode-frames 0 --repeat 1 \
        --vae-checkpointing
fi
echo "=== done in $SECONDS s"
