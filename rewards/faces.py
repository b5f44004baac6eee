"""Face embeddings for identity_lock's `embedder: face`, from facenet-pytorch (an optional
dependency, imported only here: `pip install facenet-pytorch==2.5.3`; 2.6.0 pins torch<2.3).

Per frame, MTCNN (Zhang et al. 2016) finds the faces, without gradients; the largest one inside
the frame is cropped differentiably (torchvision's `roi_align`, bilinear, to 160 x 160, the input
InceptionResnetV1 was trained on), standardised as facenet-pytorch does ((x * 255 - 127.5) / 128)
and embedded by InceptionResnetV1 (FaceNet, Schroff et al. 2015; `classify=False`: 512-d, unit
length). Gradients reach the pixels inside the face box (and, through the bilinear sampling, at
most 1.5 pixels beyond its edge), nothing else; a frame without a face gets the zero vector.

Weights: MTCNN's P-, R- and O-nets ship inside the facenet-pytorch wheel
(facenet_pytorch/data/{pnet,rnet,onet}.pt), so detection works offline. InceptionResnetV1's
VGGFace2 weights (`face_weights: default`) are facenet-pytorch's release file, read from the torch
hub cache (or facenet-pytorch's own cache, $TORCH_HOME/checkpoints), else downloaded; offline
without it, an error names the file and where to put it. A local state-dict file or `random`
(untrained: the code path only, tests) also work.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from backbones.loading import parse_dtype

FACENET_PIN = "facenet-pytorch==2.5.3"
# facenet-pytorch's published InceptionResnetV1 trained on VGGFace2 (its `pretrained='vggface2'`).
VGGFACE2_URL = ("https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
                "20180402-114759-vggface2.pt")
PUBLISHED = ("default", "vggface2")  # face_weights names for VGGFACE2_URL
FACE_SIZE = 160     # InceptionResnetV1's input side, as facenet-pytorch's MTCNN crops
EMBEDDING_DIM = 512
KEY = "reward_fn.face_weights"
_CACHE: dict[tuple[str, str], "FaceEmbedder"] = {}  # (face_weights, dtype) -> embedder, per process


def import_facenet() -> Any:
    """The facenet_pytorch module, or an ImportError saying what to install."""
    try:
        import facenet_pytorch
    except ImportError as error:
        raise ImportError(f"identity_lock with embedder=face needs facenet-pytorch: pip install "
                          f"{FACENET_PIN} (2.6.0 pins torch<2.3; 2.5.3 leaves torch alone)") from error
    return facenet_pytorch


def facenet_state(weights: str) -> dict[str, torch.Tensor]:
    """InceptionResnetV1's state dict from `weights`: 'default' / 'vggface2' (the torch hub cache,
    facenet-pytorch's own cache, else a download; offline an error naming the file and where to
    put it) or a local state-dict file. The classifier head (`logits.*`, VGGFace2's 8631
    identities) is dropped: only the embedding is used."""
    if weights not in PUBLISHED:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{KEY} {str(path)!r} not found: give a state-dict file of "
                                    "facenet-pytorch's InceptionResnetV1, 'default' for its VGGFace2 "
                                    "weights, or 'random' (untrained, tests only)")
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        name = Path(VGGFACE2_URL).name
        hub = Path(torch.hub.get_dir()) / "checkpoints" / name
        from facenet_pytorch.models.inception_resnet_v1 import get_torch_home
        own = Path(get_torch_home()) / "checkpoints" / name  # where facenet-pytorch saves it
        cached = next((p for p in (hub, own) if p.is_file()), None)
        if cached is not None:
            state = torch.load(cached, map_location="cpu", weights_only=True)
        else:
            try:
                state = torch.hub.load_state_dict_from_url(VGGFACE2_URL, progress=False,
                                                           map_location="cpu", weights_only=True)
            except Exception as error:  # offline: URLError, or a proxy's HTTP error
                raise RuntimeError(f"could not download {KEY} (InceptionResnetV1, VGGFace2) from "
                                   f"{VGGFACE2_URL} ({error}). Offline, download that file elsewhere "
                                   f"and put it at {hub}, or give its path as {KEY}") from error
    return {k: v for k, v in state.items() if not k.startswith("logits.")}


def crop_faces(images: torch.Tensor, boxes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """InceptionResnetV1's input, differentiably: `boxes` (F, 4) (x1, y1, x2, y2 in pixels) of
    images[index] (images (N, 3, H, W) in [0, 1]) resized bilinearly to 160 x 160 (roi_align,
    averaging several samples per output pixel where the box is larger) and standardised as
    facenet-pytorch does, (x * 255 - 127.5) / 128 -> (F, 3, 160, 160) float32. On a whole-pixel
    box this matches facenet-pytorch's own crop (PIL bilinear) to a mean 0.003 (tests); MTCNN's
    fractional box is kept rather than truncated to whole pixels as facenet-pytorch does."""
    from torchvision.ops import roi_align
    rois = torch.cat([index[:, None].to(boxes), boxes], dim=1)  # (F, 5): image, box
    # aligned=True: pixel i covers [i, i + 1), so the box's edges are pixel edges.
    faces = roi_align(images.float(), rois.float(), output_size=FACE_SIZE, aligned=True)
    return (faces * 255 - 127.5) / 128


class FaceEmbedder:
    """MTCNN (shipped weights) + InceptionResnetV1 (`weights`, in `dtype`), frozen, eval mode.
    Both follow the images to their device."""

    def __init__(self, weights: str = "default", dtype: str = "fp32") -> None:
        facenet = import_facenet()
        torch_dtype = parse_dtype(dtype, "reward_fn.dtype")
        # facenet-pytorch's defaults: faces of 20 pixels and up, thresholds 0.6 / 0.7 / 0.7.
        self.detector = facenet.MTCNN(select_largest=True).requires_grad_(False).eval()
        net = facenet.InceptionResnetV1(classify=False)
        if weights != "random":
            net.load_state_dict(facenet_state(weights))
        self.net = net.to(torch_dtype).requires_grad_(False).eval()

    def boxes(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (N, 3, H, W) in [0, 1] -> the largest face's box in each (N, 4) float32
        (x1, y1, x2, y2 in pixels, clipped to the frame; zeros where none) and found (N,) bool.
        No gradients: the box only says where to crop."""
        n, (h, w) = images.shape[0], images.shape[-2:]
        if self.detector.device != images.device:
            self.detector.to(images.device)
            self.detector.device = images.device  # where MTCNN.detect moves its input
        with torch.no_grad():
            pixels = images.detach().float().clamp(0, 1).mul(255).permute(0, 2, 3, 1)
            detected, _ = self.detector.detect(pixels)  # per image: None or (faces, 4)
        boxes, found = torch.zeros(n, 4), torch.zeros(n, dtype=torch.bool)
        for i, candidates in enumerate(detected):
            if candidates is None:
                continue
            c = torch.as_tensor(np.asarray(candidates, dtype=np.float32)).reshape(-1, 4)
            c[:, 0::2] = c[:, 0::2].clamp(0, w)
            c[:, 1::2] = c[:, 1::2].clamp(0, h)
            area = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
            best = int(area.argmax())
            if (c[best, 2:] - c[best, :2]).min() >= 1:  # at least a pixel left inside the frame
                boxes[i], found[i] = c[best], True
        return boxes.to(images.device), found.to(images.device)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (N, 3, H, W) in [0, 1] -> (N, 512) float32 unit embeddings of each image's
        largest face (the zero vector where there is none, so its cosine with anything is 0) and
        found (N,) bool."""
        boxes, found = self.boxes(images)
        embedded = torch.zeros(images.shape[0], EMBEDDING_DIM, device=images.device)
        index = found.nonzero().squeeze(1)
        if index.numel():
            faces = crop_faces(images, boxes[index], index)
            if next(self.net.parameters()).device != images.device:
                self.net.to(images.device)
            vectors = self.net(faces.to(next(self.net.parameters()).dtype))
            embedded = embedded.index_copy(0, index, F.normalize(vectors.float(), dim=-1))
        return embedded, found


def load_face_embedder(weights: str, dtype: str) -> FaceEmbedder:
    """A FaceEmbedder, loaded once per process for published or file weights; 'random' draws
    fresh weights each time (from torch's seed)."""
    if weights == "random":
        return FaceEmbedder(weights, dtype)
    key = (weights, dtype)
    if key not in _CACHE:
        _CACHE[key] = FaceEmbedder(weights, dtype)
    return _CACHE[key]
