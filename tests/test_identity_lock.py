"""identity_lock on a tiny random-weight DINOv2 saved in the hub layout (config, weights,
preprocessor_config.json with DINOv2's processor settings scaled down), on real footage; and with
`embedder: face` (facenet-pytorch): MTCNN with the weights its wheel ships (real detection,
offline) and InceptionResnetV1 with random weights (no download here), so the face tests check
the detection, the crop, the gradients and the no-face rule, not how well faces are told apart."""
from __future__ import annotations

import json
import math
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rewards.identity_lock import IdentityLock
from tests.conftest import ROOT, compose_cfg
from tests.test_flow_rewards import bikes, carphone, clip_of, panned
from vader.data.clips import FrameRule, read_clip
from vader.protocols import Reward

# DINOv2's BitImageProcessor (shorter side 256 bicubic, centre crop 224, ImageNet mean and std),
# scaled down for a tiny model.
PROCESSOR = {"image_processor_type": "BitImageProcessor", "do_resize": True, "size": {"shortest_edge": 40},
             "resample": 3, "do_center_crop": True, "crop_size": {"height": 32, "width": 32},
             "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
             "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          image_size=32, patch_size=8)
    folder = tmp_path_factory.mktemp("dinov2")
    Dinov2Model(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(PROCESSOR))
    return str(folder)


def test_identity_lock_is_one_for_a_still_video_and_less_when_frames_change(dinov2):
    """Only what holds for any weights: with random ones a cut to another subject is not told
    apart from a moving camera (measured: continuous bikes 0.977, cut to carphone 0.994;
    docs/rewards.md), so the ordering at a cut waits for the real DINOv2."""
    reward = IdentityLock(pretrained=dinov2)
    same, cut = clip_of(16), torch.cat([clip_of(8), carphone()], 1)
    scores, info = reward(torch.cat([same, cut]), ["bikes", "bikes, then a car"])
    assert scores.shape == (2,) and torch.isfinite(scores).all() and (scores < 1).all()
    assert info["identity_drift"].item() == pytest.approx(1 - scores.mean().item(), abs=1e-6)
    still = panned()[:, :1].expand(1, 6, -1, -1, -1).contiguous()
    assert reward(still, ["still"])[0].item() == pytest.approx(1.0, abs=1e-5)


def test_identity_lock_scores_only_its_keyframes_and_passes_gradients(dinov2):
    reward = IdentityLock(pretrained=dinov2, keyframes=4)
    video = clip_of(16)
    keys = reward.scored_frames(16)
    assert keys.tolist() == [0, 5, 10, 15]
    whole, _ = reward(video, ["bikes"])
    assert reward(video[:, keys], ["bikes"])[0].item() == pytest.approx(whole.item(), abs=1e-6)
    frames = video.clone().requires_grad_(True)
    reward(frames, ["bikes"])[0].sum().backward()
    assert torch.isfinite(frames.grad).all() and frames.grad[:, keys].abs().sum() > 0
    assert frames.grad[:, 1].abs().sum() == 0  # not a keyframe


def test_identity_lock_loads_through_its_yaml_and_says_what_is_missing(dinov2, tmp_path):
    node = OmegaConf.load(ROOT / "conf" / "reward_fn" / "identity_lock.yaml")
    assert node.pretrained == "facebook/dinov2-small"
    built = instantiate(node, pretrained=dinov2)
    assert isinstance(built, Reward) and built.differentiable and built.maximised_by_still_video
    with pytest.raises(FileNotFoundError, match="reward_fn.pretrained"):
        IdentityLock(pretrained=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="at least 2"):
        IdentityLock(pretrained=dinov2, keyframes=1)


# --- embedder: face ---------------------------------------------------------------------------

def carphone_frames(num_frames: int, height: int, width: int, stride: int) -> torch.Tensor:
    """(T, 3, height, width) in [0, 1]: carphone_pristine.mp4 (176 x 144, a man talking in a car)."""
    path = bikes().parent / "carphone_pristine.mp4"
    return (read_clip(path, FrameRule(num_frames, height, width, stride=stride, window="central")) + 1) / 2


@pytest.fixture(scope="module")
def face_weights(tmp_path_factory) -> str:
    """InceptionResnetV1's random weights (seed 0) as a state-dict file, with a classifier head
    as the published file has (dropped on loading). Untrained, it maps every face to nearly one
    direction (cosines of carphone's faces above 0.99999), so its last batch norm's running
    statistics are set to those of its features on 16 carphone faces: the embeddings spread
    (cosines from -0.9 to 0.9) and a changing face scores visibly below a still one."""
    from rewards.faces import FaceEmbedder
    torch.manual_seed(0)
    embedder = FaceEmbedder("random")
    features = []
    hook = embedder.net.last_linear.register_forward_hook(lambda m, i, out: features.append(out))
    embedder(carphone_frames(16, 64, 96, stride=7))
    hook.remove()
    net = embedder.net
    net.last_bn.running_mean.copy_(features[0].mean(0))
    net.last_bn.running_var.copy_(features[0].var(0))
    state = {**net.state_dict(), "logits.weight": torch.zeros(8, 512), "logits.bias": torch.zeros(8)}
    path = tmp_path_factory.mktemp("facenet") / "inception_resnet_v1_centred.pt"
    torch.save(state, path)
    return str(path)


def test_mtcnn_ships_its_weights_and_finds_the_face_in_carphone_but_none_in_bikes():
    import facenet_pytorch
    from rewards.faces import FaceEmbedder
    data = Path(facenet_pytorch.__file__).parent / "data"  # inside the wheel: no download
    assert sorted(p.name for p in data.glob("*.pt")) == ["onet.pt", "pnet.pt", "rnet.pt"]
    faces = FaceEmbedder("random")
    native = carphone_frames(4, 144, 176, stride=8)  # the video's own size: no resizing
    boxes, found = faces.boxes(native)
    assert found.all(), boxes
    x1, y1, x2, y2 = boxes.unbind(1)
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 176).all() and (y2 <= 144).all()
    # A head and shoulders shot: the face is about a third of the frame's width (measured 48-52
    # pixels wide, 61-63 high), left of centre.
    assert ((x2 - x1) > 0.2 * 176).all() and ((x2 - x1) < 0.45 * 176).all(), boxes
    assert ((y2 - y1) > 0.3 * 144).all() and ((y2 - y1) < 0.6 * 144).all(), boxes
    centre_x, centre_y = (x1 + x2) / 2, (y1 + y2) / 2
    assert ((centre_x > 0.3 * 176) & (centre_x < 0.6 * 176)).all(), boxes
    assert ((centre_y > 0.3 * 144) & (centre_y < 0.6 * 144)).all(), boxes
    # The face cut by the frame's left edge (MTCNN's boxes reach 26 pixels beyond it): clipped.
    boxes, found = faces.boxes(native[..., 60:].contiguous())
    assert found.all() and (boxes[:, 0] == 0).all() and (boxes[:, 2] > 30).all(), boxes
    # Two faces, a half-size one left and the full-size one right: the larger is taken.
    pair = torch.full((2, 3, 144, 352), 0.5)
    pair[..., :72, :88] = F.interpolate(native[:2], scale_factor=0.5, mode="bilinear", antialias=True)
    pair[..., 176:] = native[:2]
    boxes, found = faces.boxes(pair)
    assert found.all() and (boxes[:, 0] > 176).all() and (boxes[:, 2] - boxes[:, 0] > 40).all(), boxes
    assert faces.boxes(carphone()[0])[1].all()      # and at the tests' 64 x 96
    assert not faces.boxes(clip_of(8)[0])[1].any()  # bikes.mp4 shows no face at that size


def test_the_face_crop_is_facenet_pytorchs_crop_and_standardisation():
    """On whole-pixel boxes (facenet-pytorch truncates its boxes to them), our differentiable crop
    matches facenet-pytorch's own path (PIL crop, bilinear resize to 160, then
    fixed_image_standardization): measured mean 0.003 on this scale of about [-1, 1]; roi_align
    without aligned=True, half a pixel off, measured 0.04."""
    from facenet_pytorch import extract_face, fixed_image_standardization
    from PIL import Image
    from rewards.faces import FaceEmbedder, crop_faces
    frames = (carphone_frames(2, 144, 176, stride=8) * 255).round() / 255  # 8-bit, as PIL has it
    boxes, found = FaceEmbedder("random").boxes(frames)
    assert found.all()
    boxes = boxes.floor()
    ours = crop_faces(frames, boxes, torch.arange(2))
    assert ours.shape == (2, 3, 160, 160)
    for i in range(2):
        image = Image.fromarray((frames[i].permute(1, 2, 0) * 255).round().byte().numpy())
        reference = fixed_image_standardization(extract_face(image, boxes[i].numpy()))
        assert (ours[i] - reference).abs().mean() < 0.01


def test_face_embedder_with_random_weights_scores_a_still_face_1():
    torch.manual_seed(0)
    reward = IdentityLock(embedder="face", face_weights="random")
    moving = carphone(8)
    still = moving[:, :1].expand(1, 8, -1, -1, -1).contiguous()
    scores, info = reward(torch.cat([moving, still]), ["a man in a car"] * 2)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert scores[1].item() == pytest.approx(1.0, abs=1e-5)
    assert info["faces_found"].item() == 1.0 and not info["faces_found"].requires_grad
    embedded, found = reward.faces(moving[0, reward.scored_frames(8)])
    assert embedded.shape == (4, 512) and found.all()
    assert torch.allclose(embedded.norm(dim=1), torch.ones(4), atol=1e-5)


def test_face_embedder_scores_a_changing_face_below_a_still_one_with_gradients_inside_the_box(face_weights):
    reward = IdentityLock(embedder="face", face_weights=face_weights)
    moving = carphone(8)
    still = moving[:, 2:3].expand(1, 8, -1, -1, -1).contiguous()
    scores, _ = reward(torch.cat([moving, still]), ["a man in a car"] * 2)
    assert scores[1].item() == pytest.approx(1.0, abs=1e-5)
    assert scores[0].item() < 0.9, scores  # the face turns and talks (measured 0.10)
    frames = moving.clone().requires_grad_(True)
    reward(frames, ["a man in a car"])[0].sum().backward()
    keys = reward.scored_frames(8)
    boxes, found = reward.faces.boxes(moving[0, keys])
    assert found.all() and torch.isfinite(frames.grad).all()
    rows, cols = torch.arange(64).view(-1, 1), torch.arange(96).view(1, -1)
    for key, (x1, y1, x2, y2) in zip(keys.tolist(), boxes.tolist()):
        grad = frames.grad[0, key].abs().sum(0)
        # roi_align (aligned: pixel i's centre at i + 0.5) samples bilinearly inside the box, so
        # the pixels it reads lie within half a pixel of the box's edge, plus their neighbours.
        near = ((rows >= math.floor(y1 - 0.5)) & (rows <= math.floor(y2 - 0.5) + 1)
                & (cols >= math.floor(x1 - 0.5)) & (cols <= math.floor(x2 - 0.5) + 1))
        inside = (rows >= y1 + 1) & (rows < y2 - 1) & (cols >= x1 + 1) & (cols < x2 - 1)
        assert grad[~near].abs().sum() == 0, key
        assert (grad[inside] > 0).float().mean() > 0.9, key
    others = [t for t in range(8) if t not in keys.tolist()]
    assert frames.grad[0, others].abs().sum() == 0


def test_face_embedder_scores_keyframes_without_a_face_0(face_weights):
    """The documented rule: a keyframe without a face scores every pair it is in 0."""
    reward = IdentityLock(embedder="face", face_weights=face_weights)
    nobody = clip_of(8).requires_grad_(True)
    scores, info = reward(nobody, ["bikes"])
    assert scores.tolist() == [0.0] and info["faces_found"].item() == 0.0
    assert info["identity_drift"].item() == 1.0
    scores.sum().backward()  # the zero stays in the graph: the training step runs
    assert nobody.grad is not None and nobody.grad.abs().sum() == 0
    cut = torch.cat([clip_of(4), carphone(4)], 1)  # keyframes 0, 2 (bikes), 5, 7 (the face)
    assert reward.scored_frames(8).tolist() == [0, 2, 5, 7]
    scores, info = reward(cut, ["bikes, then a man"])
    assert info["faces_found"].item() == 0.5
    embedded, _ = reward.faces(cut[0, [5, 7]])
    # Six pairs, one with a face on both sides.
    assert scores.item() == pytest.approx((embedded[0] @ embedded[1]).item() / 6, abs=1e-5)


def test_face_embedder_composes_from_the_yaml(face_weights):
    from vader.build import build
    from vader.config import check_targets
    cfg = compose_cfg("reward_fn=identity_lock", "reward_fn.embedder=face",
                      f"reward_fn.face_weights={face_weights}")
    check_targets(cfg.reward_fn, "reward_fn")
    reward = build(cfg.reward_fn)
    assert isinstance(reward, Reward) and reward.embedder == "face" and not hasattr(reward, "model")
    assert reward(carphone(8), ["a man in a car"])[0].shape == (1,)
    with pytest.raises(ValueError, match="embedder='faces'"):
        IdentityLock(embedder="faces")


def test_face_weights_offline_missing_and_not_installed_say_what_to_do(tmp_path, monkeypatch):
    from rewards import faces
    with pytest.raises(FileNotFoundError, match="reward_fn.face_weights.*random"):
        IdentityLock(embedder="face", face_weights=str(tmp_path / "missing.pt"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # facenet-pytorch's own cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = str(tmp_path / "hub" / "checkpoints" / "20180402-114759-vggface2.pt")
    with pytest.raises(RuntimeError, match=f"20180402-114759-vggface2\\.pt.*{expected}"):
        IdentityLock(embedder="face")
    assert faces.VGGFACE2_URL.endswith("/v2.2.9/20180402-114759-vggface2.pt")
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install facenet-pytorch==2\.5\.3"):
        IdentityLock(embedder="face", face_weights="random")
