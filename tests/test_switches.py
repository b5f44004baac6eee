"""Every speed/memory switch of a training step keeps the gradients: the LoRA gradients of one
training micro-step (`RewardGradient.forward_loss`: seeded noise, the sampler with only the last
step keeping gradients, decode, colorfulness, loss) with the switch off and on, from the same
weights and noise, on the tiny backbone. Each test also checks that the switch really changed the
computation, so that a switch the code ignores cannot pass. `gradient_checkpointing` of the
sampler alone is also checked against a hand-written reference in tests/test_sampler.py."""
from __future__ import annotations

import functools
import random

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

import vader.sampling.differentiable
from tests.conftest import compose_cfg
from vader.build import build_trainer

PROMPTS, SEEDS = ["a red car", "a dog on the beach"], [3, 4]


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """trainer(*overrides) -> a set-up Trainer from the real config, one per overrides."""
    import accelerate.utils

    built = {}

    def make(*overrides: str):
        if overrides not in built:
            cfg = compose_cfg(*overrides)
            accelerate.utils.set_seed(cfg.seed)  # the same LoRA init in every build
            t = build_trainer(cfg, str(tmp_path_factory.mktemp("run")))
            t.setup()
            # peft starts LoRA B at zero, which gives LoRA A a zero gradient: perturb B, seeded.
            g = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for name, p in sorted(t.backbone.trainable_module().named_parameters()):
                    if "lora_B" in name:
                        p.normal_(0, 0.05, generator=g)
            built[overrides] = t
        return built[overrides]
    return make


def lora_grads(trainer, seeds=SEEDS, autocast: bool = False) -> list[torch.Tensor]:
    """Gradients of one micro-step's loss; `autocast` as accelerate's bf16 autocast on a CPU."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss, _, _ = trainer.algorithm.forward_loss(PROMPTS, list(seeds), random.Random(0))
    grads = torch.autograd.grad(loss, trainer.params)
    assert all(g.abs().max() > 0 for g in grads)  # every LoRA tensor takes part in the comparison
    return grads


def assert_same(got, expected, rtol: float = 1e-4, rel_atol: float = 1e-4):
    """The tight comparison. Gradients here are ~1e-6, so the absolute tolerance follows each
    tensor's own scale: `rel_atol` of its largest entry."""
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=rtol, atol=rel_atol * e.abs().max().item())


def flat(grads) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads])


def unet_batches(trainer, fn) -> list[int]:
    """The batch size of every UNet call begun while `fn` runs, recomputations in backward
    included (a pre-hook: checkpoint stops a recomputation once it has what backward needs,
    so a recomputed call may never finish)."""
    seen = []
    hook = trainer.backbone.unet.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].shape[0]))
    try:
        fn()
    finally:
        hook.remove()
    return seen


def test_batch_cfg(trainer, monkeypatch):
    t = trainer()
    expected = []
    batched = unet_batches(t, lambda: expected.extend(lora_grads(t)))
    monkeypatch.setattr(t.cfg, "batch_cfg", False)
    got = []
    separate = unet_batches(t, lambda: got.extend(lora_grads(t)))
    # 3 steps and the last one's recomputation in backward; each of them twice when separate.
    assert batched == [4] * 4 and separate == [2] * 8
    assert_same(got, expected)  # measured: at most 1.3e-5 of a tensor's largest entry


def test_attention_eager_vs_sdpa(trainer):
    sdpa, eager = trainer(), trainer("backbone.attention=eager")
    for backbone, kind in ((sdpa.backbone, AttnProcessor2_0), (eager.backbone, AttnProcessor)):
        for module in (backbone.unet, backbone.vae):
            assert {type(p) for p in module.attn_processors.values()} == {kind}
    # measured: at most 1.4e-5 of a tensor's largest entry
    assert_same(lora_grads(eager), lora_grads(sdpa))


def test_gradient_checkpointing(trainer):
    on, off = trainer(), trainer("gradient_checkpointing=false")
    assert on.backbone.gradient_checkpointing and not off.backbone.gradient_checkpointing
    got, expected = [], []
    # Checkpointing recomputes the last step's UNet call during backward: one call more.
    recomputed = unet_batches(on, lambda: got.extend(lora_grads(on)))
    plain = unet_batches(off, lambda: expected.extend(lora_grads(off)))
    assert len(recomputed) == 4 and len(plain) == 3
    assert_same(got, expected)  # measured: bitwise equal


def test_checkpoint_blocks(trainer):
    """Checkpointing each layer of the UNet's blocks instead of the whole step: the same
    gradients, and the sampler no longer recomputes the whole UNet call (the layers recompute
    themselves)."""
    step, blocks = trainer(), trainer("backbone.checkpoint_blocks=true")
    assert blocks.backbone.checkpoint_blocks and not step.backbone.checkpoint_blocks
    got = []
    calls = unet_batches(blocks, lambda: got.extend(lora_grads(blocks)))
    assert len(calls) == 3  # no whole-step recomputation
    assert_same(got, lora_grads(step))


@pytest.mark.parametrize("overrides", [(), ("gradient_checkpointing=false",)],
                         ids=["checkpointing", "no-checkpointing"])
def test_offload_activations(trainer, monkeypatch, overrides):
    t = trainer(*overrides)
    expected = lora_grads(t)
    packed = []

    class CountingSaveOnCpu(torch.autograd.graph.save_on_cpu):
        def __init__(self, pin_memory: bool = False, device_type: str = "cuda"):
            super().__init__(pin_memory, device_type)
            pack = self.pack_hook
            self.pack_hook = lambda tensor: packed.append(tensor.numel()) or pack(tensor)

    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", CountingSaveOnCpu)
    monkeypatch.setattr(t.cfg, "offload_activations", True)
    got = lora_grads(t)
    assert packed  # what backward needed went through the offloading hook
    assert_same(got, expected, rtol=0, rel_atol=0)  # measured: bitwise equal (CPU to CPU)


def test_decoding_only_the_scored_frames(trainer, monkeypatch):
    t = trainer("reward_fn.frames=2")  # frames 0 and 2 of 4
    expected = lora_grads(t)
    decode, asked = t.backbone.decode, []

    def decode_all_then_select(latents, frame_index=None):
        asked.append(frame_index)
        frames = decode(latents)
        return frames if frame_index is None else frames[:, frame_index.to(frames.device)]

    monkeypatch.setattr(t.backbone, "decode", decode_all_then_select)
    got = lora_grads(t)
    assert [i.tolist() for i in asked] == [[0, 2]]
    assert_same(got, expected)  # measured: bitwise equal


def test_bf16_autocast_is_close_not_equal(trainer):
    t = trainer()
    fp32, bf16 = flat(lora_grads(t)), flat(lora_grads(t, autocast=True))
    cosine = torch.nn.functional.cosine_similarity(fp32, bf16, dim=0).item()
    norm_change = abs(bf16.norm() - fp32.norm()).item() / fp32.norm().item()
    distance = (bf16 - fp32).norm().item() / fp32.norm().item()
    # Measured (2026-11-21, CPU autocast, these seeds): cosine 0.9991, norms 3.4% apart,
    # |bf16 - fp32| = 5.5% of |fp32|; over five seed pairs the worst were 0.9981, 3.4%, 6.8%.
    assert cosine > 0.99 and norm_change < 0.10 and distance < 0.15
    assert distance > 1e-3  # autocast really ran in bf16: not the fp32 gradients again


def test_a_different_noise_fails_these_comparisons(trainer):
    """The control: the comparisons above can fail. Other seeds' noise gives gradients outside
    the tight tolerance and outside bf16's loose one (measured: cosine 0.88)."""
    t = trainer()
    same, other = lora_grads(t), lora_grads(t, seeds=[5, 6])
    with pytest.raises(AssertionError):
        assert_same(other, same)
    assert torch.nn.functional.cosine_similarity(flat(same), flat(other), dim=0) < 0.99


@pytest.mark.slow
def test_compile_no_grad_steps(trainer, monkeypatch):
    """torch.compile (inductor, C++ on a CPU) of the UNet for the steps before the cutoff. The
    compile takes 20 s to 2 min on the 2-core CPU, hence slow."""
    from torch._dynamo.utils import counters

    # Through the real config; the training batch is the size lora_grads uses (a new shape
    # would compile once more, for dynamic shapes).
    t = trainer("compile_no_grad_steps=true", "train_batch_size=2")
    monkeypatch.setattr(t.cfg, "compile_no_grad_steps", False)
    expected = lora_grads(t)
    monkeypatch.setattr(t.cfg, "compile_no_grad_steps", True)
    graphs = counters["stats"]["unique_graphs"]
    got = lora_grads(t)
    # (No forward hook counts calls here: adding one changes what dynamo guards, so it recompiles.)
    assert counters["stats"]["unique_graphs"] > graphs  # it compiled
    assert vader.sampling.differentiable._compiled["model"] is t.backbone.unet
    assert_same(got, expected)  # measured: at most 1.3e-5 of a tensor's largest entry
    # A training step updates LoRA in place; the compiled graph takes the weights as inputs, so
    # neither that nor the next step compiles again.
    compiled = counters["stats"]["unique_graphs"]
    record = t.train_step()
    t.train_step()
    assert torch.isfinite(torch.tensor(record["loss"]))
    assert counters["stats"]["unique_graphs"] == compiled


def test_a_failed_compile_says_what_to_do(trainer, monkeypatch):
    """A compile that fails (here: a backend that raises, as inductor does without a C++
    compiler) stops with a message naming the switch that avoids it. Dynamo traces the UNet
    before the backend fails: a few seconds."""
    def no_compiler(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=no_compiler))
    monkeypatch.setattr(vader.sampling.differentiable, "_compiled", {})
    t = trainer()
    monkeypatch.setattr(t.cfg, "compile_no_grad_steps", True)
    with pytest.raises(RuntimeError, match=r"compile_no_grad_steps=false.*") as err:
        lora_grads(t)
    assert "no C++ compiler found" in str(err.value)


@pytest.mark.parametrize("override", ["batch_cfg=false", "offload_activations=true",
                                      "backbone.attention=eager"])
def test_switches_reach_training_and_evaluation_through_the_config(make_trainer, monkeypatch,
                                                                   override):
    t = make_trainer(override)
    t.setup()
    entered = []
    real = torch.autograd.graph.save_on_cpu
    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu",
                        lambda **kw: entered.append(kw) or real(**kw))
    batches = unet_batches(t, t.train_step)
    assert t.step == 1 and not t.nonfinite.total
    if override == "batch_cfg=false":
        assert set(batches) == {1}  # train_batch_size=1: each guidance pass on its own
        assert not t.spec.batch_cfg
        evaluated = unet_batches(t, lambda: t.evaluate(None, models=("tuned",), gallery=False))
        assert set(evaluated) == {4}  # val_batch_size=4 videos, not 8: evaluation too
    elif override == "offload_activations=true":
        assert entered == [{"pin_memory": torch.cuda.is_available()}]
    else:
        assert {type(p) for p in t.backbone.unet.attn_processors.values()} == {AttnProcessor}


def test_bad_attention_fails_with_the_choices(make_trainer):
    with pytest.raises(ValueError, match=r"backbone\.attention='foo'.*\['eager', 'sdpa'\]"):
        make_trainer("backbone.attention=foo")


def test_switch_types_are_checked_while_composing():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("batch_cfg=sometimes")
    assert "batch_cfg" in str(err.value) + str(err.value.__cause__)
