"""VideoCrafter2 (issue 20; backbones/videocrafter2.py, videocrafter2_convert.py): the converter
against the official architecture's full key list (tests/data/videocrafter2_keys.json: names and
shapes of AILab-CVC/VideoCrafter's LatentDiffusion built from configs/inference_t2v_512_v2.0.yaml
at commit 9691d08 on the meta device, docs/design/videocrafter2.md) and a tiny checkpoint in the
official layout; the fps conditioning; the scale_arr DDIM step against the published formula; and
every algorithm a few steps. The backbone contract: tests/test_backbones.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backbones.videocrafter2 import (FpsUNet3DConditionModel, ScaledDDIMScheduler, config, scale_levels,
                                     videocrafter2)
from backbones.videocrafter2_convert import convert_checkpoint, dropped_text_keys
from tests.tiny_videocrafter2 import write_videocrafter2

OFFICIAL = json.loads((Path(__file__).parent / "data" / "videocrafter2_keys.json").read_text())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_videocrafter2(tmp_path_factory.mktemp("vc2") / "vc2")


def load(tiny, **kwargs):
    return videocrafter2(str(tiny["checkpoint"]), tokenizer=str(tiny["tokenizer"]),
                         architecture=str(tiny["architecture"]), unet_dtype="fp32", vae_dtype="fp32",
                         text_encoder_dtype="fp32", **kwargs)


def test_every_official_key_is_converted_or_knowingly_dropped():
    """All 2,039 tensors of the official checkpoint's architecture: 1,484 UNet, 248 VAE and 280 text
    tensors land on exactly our parts' weights with their shapes; the 13 schedule buffers and the
    14 text tensors the penultimate-layer encoder never runs are dropped; nothing else. The UNet
    has 1,413,284,420 parameters: ModelScope's 1,411,233,860 plus the fps embedding's 2,050,560."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():
        unet = FpsUNet3DConditionModel(**config("modelscope_unet"))
        vae = AutoencoderKL(**config("modelscope_vae"))
        text = CLIPTextModel(CLIPTextConfig(**config("modelscope_text_encoder")))
    state = {k: torch.empty(shape, device="meta") for k, shape in OFFICIAL.items()}
    converted = convert_checkpoint(state, config("modelscope_vae"), text)
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in converted[name].items()}
        assert got == ours, (name, sorted(set(ours) ^ set(got))[:5])
    assert [len(converted[n]) for n in ("unet", "vae", "text_encoder")] == [1484, 248, 372]
    assert sum(p.numel() for p in unet.parameters()) == 1_413_284_420
    assert sum(p.numel() for p in unet.fps_embedding.parameters()) == 2_050_560
    assert len(dropped_text_keys(23)) == 14 and all(k in OFFICIAL for k in dropped_text_keys(23))
    with pytest.raises(ValueError, match="not a VideoCrafter checkpoint: 1 keys"):
        convert_checkpoint({**state, "model_ema.decay": torch.empty(())}, config("modelscope_vae"), text)


def test_a_tiny_checkpoint_in_the_official_layout_loads_weight_for_weight(tiny):
    backbone = load(tiny)
    for name in ("unet", "vae", "text_encoder"):
        ours = {k.replace(".base_layer", ""): v for k, v in getattr(backbone, name).state_dict().items()
                if "lora_" not in k}
        written = tiny[name].state_dict()
        assert set(ours) == set(written), name
        assert all(torch.equal(ours[k], written[k]) for k in written), name
    assert backbone.tokenizer.pad_token_id == 0  # open_clip.tokenize pads with 0
    assert backbone.unet.fps == 24


def test_the_fps_embedding_conditions_the_unet_and_adds_only_that(tiny):
    """With the fps embedding's output layer zeroed the UNet is diffusers' UNet3DConditionModel
    with the same weights; otherwise a different fps gives a different prediction."""
    from diffusers import UNet3DConditionModel

    unet = tiny["unet"]
    x = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(1, 24, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500])
    with torch.no_grad():
        at = {}
        for fps in (24, 8):
            unet.fps = fps
            at[fps] = unet(x, t, cond).sample
        unet.fps = 24
        assert (at[24] - at[8]).abs().max() > 1e-4
        plain = UNet3DConditionModel(**{k: v for k, v in unet.config.items() if not k.startswith("_")})
        plain.load_state_dict({k: v for k, v in unet.state_dict().items() if not k.startswith("fps_")})
        saved = {k: v.clone() for k, v in unet.fps_embedding.linear_2.state_dict().items()}
        unet.fps_embedding.linear_2.weight.zero_(), unet.fps_embedding.linear_2.bias.zero_()
        try:
            torch.testing.assert_close(unet(x, t, cond).sample, plain(x, t, cond).sample, atol=1e-6, rtol=1e-5)
        finally:
            unet.fps_embedding.linear_2.load_state_dict(saved)


def reference_step(eps: torch.Tensor, x: torch.Tensor, i: int, taus: list[int], eta: float,
                   z: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """VideoCrafter's DDIM step as published (docs/design/videocrafter2.md 5.3), in float64:
    step i of the reversed schedule at τ = taus[i] (taus ascending, index i from the end)."""
    s_arr = torch.cat([torch.linspace(1, 0.7, 400, dtype=torch.float64), torch.full((1000,), 0.7,
                                                                                   dtype=torch.float64)])
    tau = taus[i]
    a = alphas[tau]
    a_prev = alphas[taus[i - 1]] if i > 0 else alphas[0]
    s, s_prev = s_arr[tau], (s_arr[taus[i - 1]] if i > 0 else s_arr[0])
    sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
    x0 = (x - (1 - a).sqrt() * eps) / a.sqrt() / s
    return a_prev.sqrt() * s_prev * x0 + (1 - a_prev - sigma ** 2).sqrt() * eps + sigma * z


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_the_scaled_ddim_step_is_videocrafters(eta):
    """Every step of 25 (a count dividing 1000: VideoCrafter's timesteps range(0, 1000, 40) + 1)."""
    scheduler = ScaledDDIMScheduler.from_config(config("modelscope_scheduler"))
    scheduler.set_timesteps(25)
    taus = list(range(0, 1000, 40))
    assert [int(t) for t in scheduler.timesteps] == [t + 1 for t in reversed(taus)]
    taus = [t + 1 for t in taus]
    alphas = scheduler.alphas_cumprod.double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 2, 3, 3, generator=g)
    for n, t in enumerate(scheduler.timesteps):
        eps, z = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
        ours = scheduler.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
        theirs = reference_step(eps.double(), x.double(), len(taus) - 1 - n, taus, eta, z.double(), alphas)
        torch.testing.assert_close(ours.double(), theirs, atol=1e-5, rtol=1e-5)
        x = ours
    assert float(scale_levels()[0]) == 1.0 and float(scale_levels()[399]) == pytest.approx(0.7)


def test_grpo_records_the_scaled_step_it_samples():
    """DDIMStep's Gaussian for the scaled scheduler: its mean plus std times z is the scheduler's
    own step with eta and that noise, so GRPO's log-probabilities describe the samples."""
    from vader.sampling.stochastic import DDIMStep

    scheduler = ScaledDDIMScheduler.from_config(config("modelscope_scheduler"))
    scheduler.set_timesteps(10)
    kernel = DDIMStep(scheduler, 1.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 2, 3, 3, generator=g)
    for t in scheduler.timesteps[[0, 5, 9]]:
        eps, z = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
        mean, std = kernel.gaussian(eps, t.expand(2), x)
        expected = scheduler.step(eps, t, x, eta=1.0, variance_noise=z).prev_sample
        torch.testing.assert_close(mean + std * z, expected, atol=1e-5, rtol=1e-5)


def test_a_missing_checkpoint_stops_at_once_naming_the_key(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="backbone.checkpoint.*huggingface-cli download VideoCrafter/VideoCrafter2"):
        videocrafter2("VideoCrafter/VideoCrafter2", tokenizer=str(tmp_path))
    with pytest.raises(ValueError, match="backbone.fps=0"):
        videocrafter2(fps=0)


@pytest.mark.parametrize("algorithm", ["reward_grad", "grpo", "sft"])
def test_algorithms_train_on_videocrafter2(tiny_folders, make_trainer, tmp_path, algorithm):
    from tests.conftest import backbone_overrides
    from tests.video_data import write_clip_folder

    data = {"sft": ["algorithm=sft", "dataset=folder", "data.num_workers=0",
                    f"dataset.path={write_clip_folder(tmp_path / 'clips', ['red', 'blue'])}"],
            "grpo": ["algorithm=grpo", "algorithm.eta=1.0", "algorithm.group_size=2",
                     "algorithm.groups_per_step=1", "train_batch_size=2"]}.get(algorithm, [])
    trainer = make_trainer(*backbone_overrides("videocrafter2", tiny_folders), *data, run_dir=tmp_path / "run")
    trainer.setup()
    if algorithm == "grpo":
        plan = trainer.algorithm.plan(0)
        assert abs(float(trainer.algorithm.loss(plan.updates[0][0]).numbers["ratio"]) - 1) < 1e-5
    before = {k: v.clone() for k, v in trainer.backbone.lora_state_dict().items()}
    trainer.train()
    assert any((v - before[k]).abs().max() > 0 for k, v in trainer.backbone.lora_state_dict().items())
