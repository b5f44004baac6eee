"""VBench's metrics rewritten as rewards (rewards/subject_consistency.py, background_consistency.py,
temporal_flickering.py, aesthetic_quality.py, imaging_quality.py): each formula against numbers
worked out by hand, VBench's loops and torchvision transforms restated here as references, tiny
random-weight models in the hub layout, every YAML, and the errors. Nothing is downloaded; pyiqa is
replaced by a stub where it is not installed (it is optional)."""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from rewards.aesthetic import Aesthetic
from rewards.aesthetic_quality import AestheticQuality
from rewards.background_consistency import BackgroundConsistency
from rewards.imaging_quality import ImagingQuality, vbench_longer
from rewards.subject_consistency import (IMAGENET_MEAN, IMAGENET_STD, SubjectConsistency,
                                         consistency, vbench_pixels)
from rewards.temporal_flickering import TemporalFlickering
from tests.conftest import ROOT
from tests.tiny_clip import OPENAI_MEAN, OPENAI_STD, PROJECTION_DIM, reward_folders
from vader.protocols import Reward

YAMLS = ROOT / "conf" / "reward_fn"
# facebook/dino-vitb16's own preprocessor_config.json: mean = std = 0.5 and a square resize, which
# is not DINO's training normalisation nor VBench's transform; the reward must not follow it.
DINO_HUB_PROCESSOR = {"do_normalize": True, "do_resize": True,
                      "feature_extractor_type": "ViTFeatureExtractor", "image_mean": [0.5, 0.5, 0.5],
                      "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 224}

# Three unit vectors: cos(f0, f1) = 0.6, cos(f1, f2) = 0.28, cos(f0, f2) = -0.6 (clamped to 0).
# Frame 1: (0.6 + 0.6) / 2 = 0.6; frame 2: (0.28 + 0) / 2 = 0.14; the video: (0.6 + 0.14) / 2 = 0.37.
# Without VBench's max(0, ·) frame 2 would give -0.16 and the video 0.22.
TURNING = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-0.6, 0.8]])
STILL_VECTORS = torch.tensor([[0.6, 0.8]] * 3)
HAND_SCORES = [0.37, 1.0]


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    """A tiny random ViTModel in facebook/dino-vitb16's layout (patch 16, 224 position grid)."""
    from transformers import ViTConfig, ViTModel
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("dino")
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=224, patch_size=16)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(DINO_HUB_PROCESSOR))
    return str(folder)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """tests/tiny_clip.py's CLIP folder (32 x 32 input, 16-wide embeddings) with the improved
    predictor's MLP head `head.pth` and VBench's linear layout `linear.pth`."""
    folders = reward_folders(tmp_path_factory.mktemp("clips"))
    torch.manual_seed(1)
    torch.save(nn.Linear(PROJECTION_DIM, 1).state_dict(), folders["clip"] / "linear.pth")
    return folders


def video(b: int = 2, t: int = 3, h: int = 16, w: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, t, 3, h, w, generator=torch.Generator().manual_seed(seed))


def still(b: int = 1, t: int = 4, h: int = 16, w: int = 24) -> torch.Tensor:
    return video(b, 1, h, w).expand(b, t, 3, h, w).contiguous()


def vbench_consistency_loop(features: torch.Tensor) -> list[float]:
    """VBench's per-video loop (subject_consistency.py / background_consistency.py), restated."""
    scores = []
    for video_features in features:
        total = 0.0
        for i in range(1, len(video_features)):
            f, prev, first = video_features[i:i + 1], video_features[i - 1:i], video_features[:1]
            total += (max(0.0, F.cosine_similarity(prev, f).item())
                      + max(0.0, F.cosine_similarity(first, f).item())) / 2
        scores.append(total / (len(video_features) - 1))
    return scores


# --- the consistency formula ---------------------------------------------------------------

def test_consistency_matches_hand_values_and_vbenchs_loop():
    features = torch.stack([TURNING, STILL_VECTORS])
    assert consistency(features).tolist() == pytest.approx(HAND_SCORES, abs=1e-6)
    random = F.normalize(torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert consistency(random).tolist() == pytest.approx(vbench_consistency_loop(random), abs=1e-6)
    with pytest.raises(ValueError, match="at least 2 frames"):
        consistency(random[:, :1])


@pytest.mark.parametrize("which", ["subject", "background"])
def test_each_consistency_reward_applies_the_formula_to_its_features(which, dino, clips, monkeypatch):
    """The features replaced by chosen unit vectors: the reward must give the hand values."""
    frames, seen = video(2, 3), []

    def embed(images):  # SubjectConsistency.embed: (B*T, 3, H, W) -> (B*T, D)
        seen.append(images.shape[0])
        return torch.cat([TURNING, STILL_VECTORS])

    def clip_embeds(clip, f):  # background_consistency.clip_embeds: (B, T, ...) -> (B, T, D)
        seen.append(f.shape[0] * f.shape[1])
        return torch.stack([TURNING, STILL_VECTORS])

    if which == "subject":
        reward = SubjectConsistency(pretrained=dino)
        monkeypatch.setattr(reward, "embed", embed)
    else:
        import rewards.background_consistency as module
        reward = BackgroundConsistency(pretrained=str(clips["clip"]))
        monkeypatch.setattr(module, "clip_embeds", clip_embeds)
    scores, info = reward(frames, ["a", "b"])
    assert seen == [6]  # every frame of both videos, in one batch
    assert scores.tolist() == pytest.approx(HAND_SCORES, abs=1e-6)
    assert info[f"{which}_consistency"].item() == pytest.approx(sum(HAND_SCORES) / 2, abs=1e-6)


# --- VBench's preprocessing, restated with torchvision as the reference ------------------------

def test_dino_pixels_are_vbenchs_dino_transform():
    """VBench's dino_transform(n): Resize(n, antialias=False) (bilinear), ImageNet normalisation,
    no crop; applied to float tensors in 0..255, so / 255 before Normalize."""
    images = torch.rand(2, 3, 40, 64)
    reference = transforms.Compose([transforms.Resize(24, antialias=False),
                                    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(images)
    ours = vbench_pixels(images, 24, None, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    assert ours.shape == reference.shape == (2, 3, 24, 38)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_clip_pixels_are_vbenchs_clip_transform():
    """VBench's clip_transform(n): bicubic Resize(n, antialias=False), CenterCrop(n), CLIP
    normalisation. 40 x 72 -> 24 x 43: a margin of 19, where torchvision rounds (10) and a floor
    (9) would not."""
    images = torch.rand(2, 3, 40, 72)
    reference = transforms.Compose([
        transforms.Resize(24, interpolation=InterpolationMode.BICUBIC, antialias=False),
        transforms.CenterCrop(24), transforms.Normalize(OPENAI_MEAN, OPENAI_STD)])(images)
    ours = vbench_pixels(images, 24, 24, tuple(OPENAI_MEAN), tuple(OPENAI_STD), "bicubic")
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_subject_consistency_uses_vbenchs_transform_not_the_hub_processor(dino):
    """The CLS token of the model on VBench's dino_transform(224) pixels (ImageNet statistics,
    shorter side 224, position embeddings interpolated), not on the checkpoint's 0.5 / 0.5 ones."""
    reward = SubjectConsistency(pretrained=dino)
    images = video(1, 2, 16, 24)[0]
    pixels = transforms.Compose([transforms.Resize(224, antialias=False),
                                 transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(images)
    assert pixels.shape[-2:] == (224, 336)
    cls = reward.model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state[:, 0]
    torch.testing.assert_close(reward.embed(images), F.normalize(cls, dim=-1), atol=1e-5, rtol=0)
    assert reward.model.config.layer_norm_eps == 1e-6  # DINO's, not the hub config's 1e-12


# --- the model-based rewards on tiny weights ------------------------------------------------------

def build(name: str, dino: str, clips: dict) -> object:
    if name == "subject_consistency":
        return SubjectConsistency(pretrained=dino)
    if name == "background_consistency":
        return BackgroundConsistency(pretrained=str(clips["clip"]))
    if name == "aesthetic_quality":
        return AestheticQuality(pretrained=str(clips["clip"]), head_repo=str(clips["clip"]),
                                head_file="linear.pth")
    return TemporalFlickering()


DIFFERENTIABLE = ["subject_consistency", "background_consistency", "aesthetic_quality",
                  "temporal_flickering"]


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_shape_finite_and_gradient_reaches_the_frames(name, dino, clips):
    reward = build(name, dino, clips)
    frames = video(2, 3, 20, 36).requires_grad_(True)
    scores, info = reward(frames, ["a", "b"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert info and all(v.numel() == 1 and not v.requires_grad for v in info.values())
    scores.sum().backward()
    assert torch.isfinite(frames.grad).all() and frames.grad.abs().sum() > 0
    assert reward.differentiable


@pytest.mark.parametrize("name", ["subject_consistency", "background_consistency",
                                  "temporal_flickering"])
def test_a_still_video_scores_one(name, dino, clips):
    reward = build(name, dino, clips)
    assert reward.maximised_by_still_video
    assert reward(still(), ["still"])[0].item() == pytest.approx(1.0, abs=1e-5)
    assert reward(video(1, 4), ["moving"])[0].item() < 1 - 1e-4


def test_consistency_rewards_need_consecutive_frames(dino, clips):
    with pytest.raises(ValueError, match="not 'random'"):
        SubjectConsistency(pretrained=dino, frames="random")
    with pytest.raises(ValueError, match="not 'random'"):
        BackgroundConsistency(pretrained=str(clips["clip"]), frames="random")
    with pytest.raises(ValueError, match="at least 2 frames"):
        SubjectConsistency(pretrained=dino)(video(1, 1), ["one frame"])


# --- temporal flickering ------------------------------------------------------------------------

def test_temporal_flickering_equals_the_hand_value():
    """Frame 0 black; frame 1 grey level 51 everywhere (|diff| 51); frame 2 keeps 51 on the left
    half and turns white (255) on the right (|diff| 0 and 204, mean 102). Mean MAE 76.5:
    score (255 - 76.5) / 255 = 0.7."""
    frames = torch.zeros(1, 3, 3, 2, 2)
    frames[:, 1] = 51 / 255
    frames[:, 2, :, :, 0] = 51 / 255
    frames[:, 2, :, :, 1] = 1.0
    score, info = TemporalFlickering()(frames, ["flicker"])
    assert score.item() == pytest.approx(0.7, abs=1e-6)
    assert info["frame_mae_255"].item() == pytest.approx(76.5, abs=1e-4)


def test_temporal_flickering_matches_vbenchs_8_bit_procedure():
    """VBench: uint8 frames, mean of cv2.absdiff per consecutive pair, (255 - mean) / 255."""
    levels = np.random.default_rng(0).integers(0, 256, size=(2, 5, 12, 10, 3), dtype=np.uint8)
    expected = [(255.0 - np.mean([np.mean(np.abs(v[i].astype(np.float32) - v[i + 1].astype(np.float32)))
                                  for i in range(len(v) - 1)])) / 255.0 for v in levels]
    frames = torch.from_numpy(levels).permute(0, 1, 4, 2, 3).float() / 255
    assert TemporalFlickering()(frames, ["a", "b"])[0].tolist() == pytest.approx(expected, abs=1e-6)


# --- aesthetic quality ----------------------------------------------------------------------------

def test_aesthetic_quality_is_vbenchs_linear_head_over_ten(clips):
    """32 x 32 frames are the tiny CLIP's input size: no resize or crop, so the reference is the
    model on normalised frames, the linear head, / 10, the mean over frames."""
    from transformers import CLIPModel
    frames = video(2, 3, 32, 32)
    reward = AestheticQuality(pretrained=str(clips["clip"]), head_repo=str(clips["clip"]),
                              head_file="linear.pth")
    model = CLIPModel.from_pretrained(str(clips["clip"])).eval()
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    out = model.get_image_features(pixel_values=(frames.flatten(0, 1) - mean) / std)
    embeds = F.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)
    head = torch.load(clips["clip"] / "linear.pth", weights_only=True)
    expected = ((embeds @ head["weight"].T + head["bias"]) / 10).view(2, 3).mean(1)
    scores, info = reward(frames, ["a", "b"])
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    assert not reward.maximised_by_still_video


def test_aesthetic_quality_is_the_aesthetic_reward_over_ten_with_its_head(clips):
    """With the improved predictor's MLP file, the per-video score is rewards/aesthetic.py's mean
    score / 10 (frames at the model's size, where the two preprocessings agree)."""
    frames = video(2, 3, 32, 32)
    kwargs = dict(pretrained=str(clips["clip"]), head_repo=str(clips["clip"]), head_file="head.pth")
    quality = AestheticQuality(**kwargs)(frames, ["a", "b"])[0]
    aesthetic = Aesthetic(**kwargs)(frames, ["a", "b"])[0]
    torch.testing.assert_close(quality, aesthetic / 10, atol=1e-6, rtol=0)


def test_aesthetic_quality_says_where_the_head_is_and_what_it_must_hold(clips, tmp_path):
    clip = str(clips["clip"])
    with pytest.raises(FileNotFoundError, match=r"reward_fn.head_repo.*LAION-AI/aesthetic-predictor"):
        AestheticQuality(pretrained=clip, head_repo=str(tmp_path / "missing"))
    torch.save({"foo": torch.zeros(1)}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match=r"\['bias', 'weight'\]"):
        AestheticQuality(pretrained=clip, head_repo=str(tmp_path), head_file="odd.pth")
    torch.save(nn.Linear(PROJECTION_DIM + 1, 1).state_dict(), tmp_path / "wide.pth")
    with pytest.raises(ValueError, match=rf"\(1, {PROJECTION_DIM}\)"):
        AestheticQuality(pretrained=clip, head_repo=str(tmp_path), head_file="wide.pth")


# --- imaging quality (pyiqa optional) -------------------------------------------------------------

def frames_grad_ok(frames: torch.Tensor) -> bool:
    return frames.grad is not None and bool(torch.isfinite(frames.grad).all()) \
        and frames.grad.abs().sum().item() > 0


class StubMusiq(nn.Module):
    """Stands in for pyiqa's MUSIQ network: 100 x the frame's mean pixel, remembering its input."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # a parameter, as the real network has
        self.inputs: list[torch.Size] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.shape)
        return 100 * x.mean(dim=(1, 2, 3)).unsqueeze(1) + self.anchor


@pytest.fixture
def stub_pyiqa(monkeypatch):
    """A `pyiqa` module whose create_metric records its arguments and builds a StubMusiq."""
    calls = []

    def create_metric(name, as_loss=False, device=None, **kwargs):
        calls.append((name, kwargs))
        return types.SimpleNamespace(net=StubMusiq())

    monkeypatch.setitem(sys.modules, "pyiqa", types.SimpleNamespace(create_metric=create_metric))
    return calls


def test_imaging_quality_without_pyiqa_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # as if not installed, whether it is or not
    with pytest.raises(ImportError, match="pip install pyiqa"):
        ImagingQuality()


def test_imaging_quality_shrinks_the_longer_side_to_512_and_divides_by_100(stub_pyiqa):
    """Frame t of video b is flat at level v[b][t]; a flat frame stays flat when resized, so the
    score is the mean level over frames: (0.2 + 0.4 + 0.9) / 3 = 0.5 and (0.1 + 0.1 + 0.4) / 3 = 0.2."""
    reward = ImagingQuality()
    assert stub_pyiqa == [("musiq-spaq", {})]  # VBench's SPAQ-trained MUSIQ
    levels = torch.tensor([[0.2, 0.4, 0.9], [0.1, 0.1, 0.4]])
    big = levels.view(2, 3, 1, 1, 1).expand(2, 3, 3, 1024, 640).contiguous()
    scores, info = reward(big, ["a", "b"])
    assert reward.net.inputs == [(6, 3, 512, 320)]  # 1024 x 640 scaled by 512 / 1024
    assert scores.tolist() == pytest.approx([0.5, 0.2], abs=1e-5)
    assert info["imaging_quality"].item() == pytest.approx(0.35, abs=1e-5)
    small = video(2, 3, 64, 96).requires_grad_(True)  # longer side under 512: as it is
    reward(small, ["a", "b"])[0].sum().backward()
    assert reward.net.inputs[-1] == (6, 3, 64, 96)
    assert frames_grad_ok(small)


def test_vbench_longer_is_vbenchs_resize():
    """VBench's 'longer' mode: Resize((int(s h), int(s w)), antialias=False), s = 512 / max(h, w)."""
    images = torch.rand(1, 3, 600, 1000)
    scale = 512 / 1000
    reference = transforms.Resize((int(scale * 600), int(scale * 1000)), antialias=False)(images)
    ours = vbench_longer(images)
    assert ours.shape[-2:] == (307, 512)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    assert vbench_longer(images[..., :400, :]).shape[-2:] == (204, 512)  # only the longer side counts
    at_limit = images[..., :400, :512]
    assert vbench_longer(at_limit) is at_limit  # a longer side of 512 or less: untouched


def test_imaging_quality_passes_a_local_checkpoint_and_names_a_missing_one(stub_pyiqa, tmp_path):
    weights = tmp_path / "musiq_spaq_ckpt-358bb6af.pth"
    weights.write_bytes(b"")
    ImagingQuality(weights=str(weights))
    assert stub_pyiqa[-1] == ("musiq-spaq", {"pretrained_model_path": str(weights)})
    with pytest.raises(FileNotFoundError, match="reward_fn.weights"):
        ImagingQuality(weights=str(tmp_path / "missing.pth"))


def test_imaging_quality_on_real_pyiqa_with_random_musiq(monkeypatch):
    """Where pyiqa is installed: its real MUSIQ network (random weights, nothing downloaded) gives
    one finite score per video and gradients at the frames."""
    pyiqa = pytest.importorskip("pyiqa", reason="pyiqa is optional and not installed here")
    real = pyiqa.create_metric
    monkeypatch.setattr(pyiqa, "create_metric", lambda *a, **k: real(*a, pretrained=False, **k))
    frames = video(2, 2, 64, 96).requires_grad_(True)
    scores, _ = ImagingQuality()(frames, ["a", "b"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    scores.sum().backward()
    assert frames_grad_ok(frames)


# --- the YAMLs, and what a missing model says -------------------------------------------------------

def overrides(name: str, dino: str, clips: dict) -> dict:
    return {"subject_consistency": {"pretrained": dino},
            "background_consistency": {"pretrained": str(clips["clip"])},
            "aesthetic_quality": {"pretrained": str(clips["clip"]), "head_repo": str(clips["clip"]),
                                  "head_file": "linear.pth"},
            "temporal_flickering": {}, "imaging_quality": {}}[name]


@pytest.mark.parametrize("name, still_best", [
    ("subject_consistency", True), ("background_consistency", True), ("temporal_flickering", True),
    ("aesthetic_quality", False), ("imaging_quality", False)])
def test_yaml_builds_a_reward_that_scores(name, still_best, dino, clips, stub_pyiqa):
    node = OmegaConf.load(YAMLS / f"{name}.yaml")
    assert node._target_ == f"rewards.{name}.{''.join(p.title() for p in name.split('_'))}"
    assert (YAMLS / f"{name}.yaml").read_text().startswith("# ")
    assert "VBench's dimension" in (YAMLS / f"{name}.yaml").read_text().splitlines()[0]
    reward = instantiate(node, **overrides(name, dino, clips))
    assert isinstance(reward, Reward) and reward.differentiable
    assert reward.maximised_by_still_video is still_best and reward.frames == "all"
    scores, _ = reward(video(2, 3), ["a", "b"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()


@pytest.mark.parametrize("cls", [SubjectConsistency, BackgroundConsistency, AestheticQuality])
def test_a_missing_folder_or_an_offline_hub_id_names_the_key(cls, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"reward_fn.pretrained.*no such folder"):
        cls(pretrained=str(tmp_path / "missing"))
    # The default hub id, with an empty hub cache and the hub offline (conftest sets HF_HUB_OFFLINE).
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(FileNotFoundError, match=r"reward_fn.pretrained.*HF_HUB_OFFLINE"):
        cls()
