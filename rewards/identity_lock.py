"""Identity lock: does the video keep showing the same subject? The mean cosine similarity of
embeddings of `keyframes` frames spread evenly over the clip (first and last included), over
every pair of them. Drift = 1 − similarity is logged. Two embedders (`embedder`):

- `dinov2` (the default): DINOv2 (Oquab et al. 2023, through transformers' `Dinov2Model`: the
  layer-normed CLS token, `pooler_output`). DINO's CLS token attends to the salient object, so
  this follows the subject more than the background, but it embeds the whole frame: a subject
  that stays while the scene around it changes completely also loses similarity. Preprocessing
  follows the checkpoint's preprocessor_config.json (DINOv2's BitImageProcessor: shorter side 256
  bicubic, centre crop 224, ImageNet mean and std), differentiably.
- `face`: the person's face only (rewards/faces.py, facenet-pytorch, an optional dependency:
  `pip install facenet-pytorch==2.5.3`). In each keyframe MTCNN finds the largest face (no
  gradients), which is cropped differentiably to 160 x 160 and embedded by InceptionResnetV1
  (512-d, unit length; `face_weights`: VGGFace2, a state-dict file or `random`). A keyframe
  without a face counts as the identity lost: every pair it is in scores 0 (the cosine of the
  zero vector; unrelated faces score about that), so a video without faces scores 0 and one
  whose face is missing from one of 4 keyframes at most 0.5. `faces_found`, the share of
  keyframes with a face, is logged. Gradients reach only the pixels inside the face boxes.
  `pretrained` is not used.

The trainer decodes only the keyframes (`scored_frames`). Differentiable. A still video scores 1,
the maximum (with `face`: a still video showing a face): `maximised_by_still_video` says so.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from backbones.loading import Source, check_source
from rewards import check_frames
from rewards.clip_hf import ImageSettings, read_image_settings
from rewards.common import flatten_frames, resize_crop_normalize
from rewards.flow import check_consecutive
from rewards.video_models import clip_scored_frames, load_cached, sample_clip


def load_dinov2(pretrained: str, dtype: str, **kwargs: Any) -> tuple[Any, ImageSettings]:
    """A frozen transformers Dinov2Model and its preprocessor settings from a hub id or folder,
    checked first so that a missing model fails with an error naming reward_fn.pretrained; loaded
    once per process and shared (identity_lock, novelty_after_k, framing)."""
    from transformers import Dinov2Model  # heavy: imported when a reward is built
    key = "reward_fn.pretrained"
    check_source(Source(key, pretrained, "config.json"))
    settings = read_image_settings(pretrained, key)
    return load_cached(Dinov2Model, key, pretrained, dtype, **kwargs), settings


def dinov2_embed(model: Any, settings: ImageSettings, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, D) unit-length float32 CLS embeddings (`pooler_output`, the
    layer-normed CLS token), preprocessed differentiably as the checkpoint's processor does. The
    model follows the images to their device (the trainer moves only the backbone)."""
    weights = next(model.parameters())
    if weights.device != images.device:
        model.to(images.device)
    s = settings
    pixels = resize_crop_normalize(images.float(), s.size, s.crop, s.mean, s.std, s.mode)
    embedded = model(pixel_values=pixels.to(weights.dtype)).pooler_output
    return F.normalize(embedded.float(), dim=-1)


EMBEDDERS = ("dinov2", "face")


class IdentityLock:
    differentiable = True
    maximised_by_still_video = True

    def __init__(self, pretrained: str = "facebook/dinov2-small", frames: str | int = "all",
                 keyframes: int = 4, dtype: str = "fp32", embedder: str = "dinov2",
                 face_weights: str = "default") -> None:
        check_consecutive("identity_lock", frames)
        if keyframes < 2:
            raise ValueError(f"identity_lock keyframes={keyframes}: at least 2 to compare")
        if embedder not in EMBEDDERS:
            raise ValueError(f"identity_lock embedder={embedder!r}: use one of {EMBEDDERS}")
        self.frames, self.keyframes, self.embedder = frames, keyframes, embedder
        if embedder == "dinov2":
            self.model, self.settings = load_dinov2(pretrained, dtype)
        else:
            from rewards.faces import load_face_embedder  # facenet-pytorch: optional
            self.faces = load_face_embedder(face_weights, dtype)

    def scored_frames(self, num_frames: int) -> torch.Tensor:
        """The keyframes, out of `num_frames` (see vader.protocols.Reward)."""
        return clip_scored_frames(num_frames, self.keyframes)

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        if frames.shape[1] < 2:
            raise ValueError("identity_lock needs at least 2 frames per video")
        keys = sample_clip(frames, min(self.keyframes, frames.shape[1]))     # (B, K, 3, H, W)
        b, k = keys.shape[:2]
        info: dict[str, Any] = {}
        if self.embedder == "dinov2":
            embedded = dinov2_embed(self.model, self.settings, flatten_frames(keys)).view(b, k, -1)
        else:
            embedded, found = self.faces(flatten_frames(keys))       # zero vector: no face
            embedded = embedded.view(b, k, -1)
            info["faces_found"] = found.float().mean()
        cosine = embedded @ embedded.transpose(1, 2)                          # (B, K, K)
        pairs = torch.triu_indices(k, k, offset=1, device=cosine.device)
        similarity = cosine[:, pairs[0], pairs[1]].mean(1)
        if not similarity.requires_grad and keys.requires_grad:
            # No face in any keyframe: the zeros stay tied to the frames, so a backward pass
            # runs (with zero gradient) as for any other batch.
            similarity = similarity + 0 * keys.sum(dim=(1, 2, 3, 4))
        info |= {"identity_similarity": similarity.detach().mean(),
                 "identity_drift": (1 - similarity).detach().mean()}
        return similarity.to(frames.dtype), info
