"""The differentiable sampler, written once for every backbone.

It unrolls a diffusers scheduler with classifier-free guidance. Steps before the *cutoff* run
under `torch.no_grad()`, so no autograd graph exists for them at all; steps from the cutoff on
keep gradients (truncated backprop, as in VADER/DRaFT-K), each network call wrapped in
non-reentrant gradient checkpointing so memory follows K, not the number of steps.

Switches that change speed or memory but not the gradients (tests/test_switches.py compares each
on and off): `batch_cfg` (guidance's two passes in one call or two), `gradient_checkpointing`,
`compile_no_grad_steps` (torch.compile for the steps before the cutoff only).
"""
from __future__ import annotations

import copy
import random
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from vader.protocols import Backbone
from vader.sampling.seeds import ETA, generator_seed
from vader.sampling.keyframes import Keyframes, put, renoised
from vader.sampling.windows import TIME_AXIS, Windows, in_windows

BACKPROP_MODES = ("last", "rand", "specific")


def check_backprop(mode: str, num_steps: int, backprop_steps: int, backprop_step: int | None) -> None:
    """Raise ValueError, saying what to change, for settings no sampler run could honour."""
    if mode not in BACKPROP_MODES:
        raise ValueError(f"backprop_mode={mode!r} is not one of {BACKPROP_MODES}")
    if num_steps < 1:
        raise ValueError(f"num_inference_steps must be at least 1, got {num_steps}")
    if mode == "last" and not 1 <= backprop_steps <= num_steps:
        raise ValueError(f"backprop_steps={backprop_steps} must be between 1 and "
                         f"num_inference_steps={num_steps}; lower backprop_steps or raise "
                         "num_inference_steps")
    if mode == "specific" and (backprop_step is None or not 0 <= backprop_step < num_steps):
        raise ValueError(f"backprop_mode=specific needs backprop_step in [0, {num_steps - 1}] "
                         f"(the step index gradients start from), got {backprop_step}")


def dead_steps(make_scheduler: Callable[[], Any], num_steps: int) -> frozenset[int]:
    """Indices of the denoising steps whose result does not depend on the model output.

    Schedules that end exactly at t=0 (`timestep_spacing=linspace`, AnimateDiff's) make the last
    DDIM or DPM-Solver step an identity: x0 and the noise it removes cancel. Backprop through only
    that step would give LoRA a zero gradient, so such steps are found by probing the scheduler
    with two different model outputs, and are not counted as gradient steps."""
    scheduler = make_scheduler()
    scheduler.set_timesteps(num_steps)
    x = torch.randn((1, 4, 4, 4), generator=torch.Generator().manual_seed(0))
    dead = set()
    for i, t in enumerate(scheduler.timesteps):
        x_in = model_input(scheduler, x, t)
        outs = [copy.deepcopy(scheduler).step(torch.full_like(x_in, v), t, x).prev_sample
                for v in (0.0, 1.0)]
        if (outs[0] - outs[1]).abs().max() < 1e-4:
            dead.add(i)
        x = scheduler.step(torch.zeros_like(x_in), t, x).prev_sample  # advance multistep state
    return frozenset(dead)


def model_input(scheduler: Any, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """`scheduler.scale_model_input`; flow-matching schedulers have none: their network input
    is the latent itself."""
    scale = getattr(scheduler, "scale_model_input", None)
    return latents if scale is None else scale(latents, t)


def cutoff_index(mode: str, num_steps: int, backprop_steps: int = 1,
                 backprop_step: int | None = None, rng: random.Random | None = None,
                 dead: frozenset[int] = frozenset()) -> int:
    """Index of the first denoising step that keeps gradients.

    last: the last `backprop_steps` steps that depend on the model (steps in `dead`, see
    `dead_steps`, are skipped when counting); rand: a cutoff drawn uniformly from those steps
    (VADER's 'rand'), from `rng` so every process draws the same one; specific: `backprop_step`.
    """
    check_backprop(mode, num_steps, backprop_steps, backprop_step)
    live = [i for i in range(num_steps) if i not in dead] or list(range(num_steps))
    if mode == "last":
        return live[-min(backprop_steps, len(live))] if backprop_steps < num_steps else 0
    if mode == "rand":
        return (rng or random).choice(live)
    return int(backprop_step)


def make_noise(shape: tuple[int, ...], seeds: list[int], device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32, draw_on: torch.device | str = "cpu") -> torch.Tensor:
    """One generator per video: a video's noise depends on its seed alone, not on how a batch is
    split across processes or micro-batches, which makes multi-GPU runs match one-GPU runs.

    draw_on: where the generators run. "cpu" (the initial noise): the same numbers on every
    machine, copied to `device`. The sampler draws DDIM's per-step eta noise on the latents'
    device instead, so no step waits for a host-to-device copy; on a CPU that is the same
    numbers, but a CUDA generator (Philox) draws other numbers than a CPU one (Mersenne Twister)
    for the same seed, so with eta > 0 a GPU run's samples depend on the seed and on the device
    type: still the same on every process and after a resume, not the same as on a CPU."""
    if len(seeds) != shape[0]:
        raise ValueError(f"need one seed per video: {len(seeds)} seeds for batch {shape[0]}")
    draw_on = torch.device(draw_on)
    noise = [torch.randn(shape[1:], generator=torch.Generator(draw_on).manual_seed(int(s)),
                         device=draw_on) for s in seeds]
    return torch.stack(noise).to(device=device, dtype=dtype)


def step_noise(latents: torch.Tensor, step_seeds: list[int], index: int) -> torch.Tensor:
    """The noise denoising step `index` adds to each video when it draws noise (DDIM with
    eta > 0), from the video's step seed: the differentiable and the stochastic sampler draw it
    here alike, so both give the same video from the same seeds."""
    return make_noise(tuple(latents.shape), [generator_seed(ETA, s, index) for s in step_seeds],
                      latents.device, latents.dtype, draw_on=latents.device)


_compiled: dict[str, Any] = {}  # {"model": a module, "compiled": its torch.compile}


def compiled(model: nn.Module) -> nn.Module:
    """`torch.compile(model)`, built once and reused for as long as the same model is sampled
    with (the trainer's LoRA updates are in place, so they need no recompile). One slot, not a
    cache keyed by model: a process trains one model, and a compiled module would keep its
    key alive forever."""
    # The steps it runs keep no gradients, so DDP has nothing to synchronise: compile the module
    # inside, which also keeps dynamo away from DDP's gradient buckets.
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    if _compiled.get("model") is not inner:
        try:
            _compiled.update(model=inner, compiled=torch.compile(inner))
        except RuntimeError as err:  # e.g. a Python version dynamo does not support yet
            raise compile_error(err) from err
    return _compiled["compiled"]


def compile_error(err: Exception) -> RuntimeError:
    # Dynamo wraps what the backend raised (a C++ compiler error, say); that is the news.
    cause = getattr(err, "inner_exception", None) or err
    first = (str(cause).strip().splitlines() or [""])[0][:300]
    return RuntimeError(
        f"compile_no_grad_steps=true: torch.compile of the steps before the cutoff failed "
        f"({type(cause).__name__}: {first}). Set compile_no_grad_steps=false to run them "
        "uncompiled (the gradients are the same); on a CPU, torch.compile also needs a working C++ "
        "compiler (gcc or clang)")


def conditioning(backbone: Backbone, prompts: list[str], guidance_scale: float) -> torch.Tensor:
    """The text conditioning `guided_prediction` takes: with guidance, the empty prompt's for
    every video, then the prompts' (`cond.chunk(2)` splits them)."""
    cond = backbone.encode_prompts(list(prompts))
    if guidance_scale > 1.0:
        cond = torch.cat([backbone.encode_prompts([""] * len(prompts)), cond])
    return cond


def guided_prediction(backbone: Backbone, net: nn.Module, x_in: torch.Tensor, t: torch.Tensor,
                      cond: torch.Tensor, guidance_scale: float, batch_cfg: bool = True) -> torch.Tensor:
    """The network's prediction for `x_in` (already scaled by the scheduler) with classifier-free
    guidance, one network call on a doubled batch (`batch_cfg`) or two. `t` is one timestep or
    one per video (the stochastic sampler's update trains each video at its own step)."""
    if guidance_scale <= 1.0:
        return backbone.predict(net, x_in, t, cond)
    if batch_cfg:
        t2 = torch.cat([t, t]) if t.ndim else t
        uncond, text = backbone.predict(net, torch.cat([x_in, x_in]), t2, cond).chunk(2)
    else:
        uncond, text = (backbone.predict(net, x_in, t, c) for c in cond.chunk(2))
    # A backbone may weigh guidance per frame (SVD's ramp over frames, backbones/svd.py).
    weights = getattr(backbone, "guidance_weights", None)
    scale = guidance_scale if weights is None else weights(guidance_scale, uncond)
    return uncond + scale * (text - uncond)


def sample(backbone: Backbone, model: nn.Module, prompts: list[str], noise: torch.Tensor, *,
           num_inference_steps: int, guidance_scale: float = 7.5, cutoff: int | None = None,
           eta: float = 0.0, step_seeds: list[int] | None = None,
           gradient_checkpointing: bool = True, batch_cfg: bool = True,
           compile_no_grad_steps: bool = False, windows: Windows | None = None,
           keyframes: Keyframes | None = None) -> torch.Tensor:
    """Denoise `noise` into clean latents. Gradients flow through steps `cutoff..end` when grad
    mode is on; `cutoff=None` (or grad mode off) samples without any graph.

    batch_cfg: guidance's unconditional and conditional passes as one network call on a doubled
    batch (faster), or False: two calls (about half the activation memory at a time, slower).
    compile_no_grad_steps: the steps that keep no gradients call `torch.compile(model)`; the
    steps that do keep them always run eagerly. windows: a latent longer than the backbone's
    window is predicted window by window and the overlaps fused (vader.sampling.windows); with
    checkpointing each window's call is checkpointed on its own, so the memory a step keeps for
    backward follows the window, not the length. keyframes: two passes (vader.sampling.keyframes):
    the keyframes alone without gradients at their guidance, then every frame at the in-between
    guidance with the keyframes re-noised into place at each step and kept exactly at the end."""
    if len(prompts) != noise.shape[0]:
        raise ValueError(f"{len(prompts)} prompts for {noise.shape[0]} noise samples")
    known = None
    if keyframes is not None:
        index = torch.tensor(keyframes.indices(noise.shape[TIME_AXIS]))
        key_windows = windows if windows is not None and len(index) > windows.window else None
        with torch.no_grad():
            keys = sample(backbone, model, prompts, noise.index_select(TIME_AXIS, index.to(noise.device)),
                          num_inference_steps=num_inference_steps,
                          guidance_scale=keyframes.guidance_scale or guidance_scale, eta=eta,
                          step_seeds=step_seeds, batch_cfg=batch_cfg,
                          compile_no_grad_steps=compile_no_grad_steps, windows=key_windows)
        known = (index, keys, noise.index_select(TIME_AXIS, index.to(noise.device)))
        guidance_scale = keyframes.inbetween_guidance_scale
    scheduler = backbone.make_scheduler()
    # Timesteps stay on the CPU (the network moves its timestep to the latents' device): DDIM's
    # `step` indexes its CPU alphas with the timestep and compares it with 0, which with a GPU
    # timestep makes the host wait for the GPU at every step. Same values either way.
    scheduler.set_timesteps(num_inference_steps)
    cond = conditioning(backbone, prompts, guidance_scale)
    cutoff = num_inference_steps if cutoff is None else cutoff
    latents = noise * getattr(scheduler, "init_noise_sigma", 1.0)  # flow matching: none (1)

    no_grad_model = compiled(model) if compile_no_grad_steps else model
    # A backbone that checkpoints its own blocks needs no second, outer checkpoint (it would only
    # add a recomputation of the whole step).
    checkpoint_steps = gradient_checkpointing and not getattr(backbone, "checkpoint_blocks", False)
    # Dynamo reports a failed compile on the first call, as one of its own exception types.
    compile_errors = _dynamo_errors() if compile_no_grad_steps else ()

    def eps(x_in: torch.Tensor, t: torch.Tensor, net: nn.Module) -> torch.Tensor:
        return guided_prediction(backbone, net, x_in, t, cond, guidance_scale, batch_cfg)

    def predict(x_in: torch.Tensor, t: torch.Tensor, net: nn.Module, checkpointed: bool) -> torch.Tensor:
        if checkpointed:
            one = lambda x: checkpoint(eps, x, t, net, use_reentrant=False)  # noqa: E731
        else:
            one = lambda x: eps(x, t, net)  # noqa: E731
        return in_windows(one, x_in, windows)

    for i, t in enumerate(scheduler.timesteps):
        track = torch.is_grad_enabled() and i >= cutoff
        with torch.set_grad_enabled(track):
            if known is not None:  # RePaint: the keyframes at this step's noise level
                latents = put(latents, known[0], renoised(scheduler, known[1], known[2], t))
            # Scaled outside the checkpoint: Euler's `scale_model_input` reads the step index
            # that `step` advances, so a recomputation in backward would scale with the sigma
            # of whatever step the sampler had reached by then, not this one's.
            x_in = model_input(scheduler, latents, t)
            if track:
                # Only the network call is checkpointed: multistep schedulers mutate their state
                # in `step`, which a recomputation must not repeat.
                out = predict(x_in, t, model, checkpoint_steps)
            else:
                try:
                    out = predict(x_in, t, no_grad_model, False)
                except compile_errors as err:
                    raise compile_error(err) from err
            kwargs = {}
            if eta > 0:
                kwargs = {"eta": eta, "variance_noise": step_noise(
                    latents, step_seeds or list(range(len(prompts))), i)}
            latents = scheduler.step(out, t, latents, **kwargs).prev_sample
    return latents if known is None else put(latents, known[0], known[1])


def _dynamo_errors() -> tuple[type[Exception], ...]:
    from torch._dynamo.exc import TorchDynamoException  # imported only when compiling

    return (TorchDynamoException,)
