"""Caption consistency: does what a captioner sees in the video match the prompt, all through the
clip? `num_captioned` frames spread evenly over the clip (first and last included) are captioned
by BLIP (Li et al. 2022, through transformers' `BlipForConditionalGeneration`; greedy decoding),
and each caption is compared with the prompt by a sentence-embedding model through the
`sentence-transformers` package: the cosine similarity of the normalised embeddings, in [-1, 1].
The score per video aggregates the per-frame similarities (`aggregation`); `min` catches a video
whose subject drifts away from the prompt midway.

Images reach BLIP through the checkpoint's own BlipProcessor, as 8-bit RGB (what it was trained
on). The trainer decodes only the captioned frames (`scored_frames`). The captions of the last
call are in `info["captions"]` (one list per video); the trainer logs only info's numbers.

Not differentiable: captions are discrete tokens. For GRPO and evaluation. A still video scores
what its one frame's caption does, not the maximum: `maximised_by_still_video = False`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from backbones.loading import Source, check_source, load_part
from rewards import check_frames
from rewards.common import aggregate, check_aggregation, flatten_frames
from rewards.video_models import check_frames_option, clip_scored_frames, load_cached, sample_clip


class CaptionConsistency:
    differentiable = False
    maximised_by_still_video = False

    def __init__(self, pretrained: str = "Salesforce/blip-image-captioning-base",
                 sentence_model: str = "sentence-transformers/all-MiniLM-L6-v2",
                 frames: str | int = "all", num_captioned: int = 4, max_new_tokens: int = 20,
                 aggregation: str = "mean", dtype: str = "fp32") -> None:
        from transformers import BlipForConditionalGeneration, BlipProcessor
        check_frames_option(frames)
        if frames == "random":  # one frame repeated: the clip-wide comparison would mean nothing
            raise ValueError("caption_consistency captions frames spread over the clip: "
                             "frames='all' or an int n (every n-th frame), not 'random'")
        check_aggregation(aggregation)
        for name, value in (("num_captioned", num_captioned), ("max_new_tokens", max_new_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"reward_fn.{name}={value!r}: use a positive int")
        self.frames, self.num_captioned = frames, num_captioned
        self.max_new_tokens, self.aggregation = max_new_tokens, aggregation
        # Every file is checked before anything loads, so a typo in the second model does not
        # surface after the first one has loaded.
        key, sentence_key = "reward_fn.pretrained", "reward_fn.sentence_model"
        processor = Source(key, pretrained, "tokenizer_config.json", weights=False)
        sentence = Source(sentence_key, sentence_model, "modules.json")  # sentence-transformers' layout
        for source in (Source(key, pretrained, "config.json"), processor, sentence):
            check_source(source)
        self.captioner = load_cached(BlipForConditionalGeneration, key, pretrained, dtype)
        self.processor = load_part(BlipProcessor, processor)
        self.sentence = load_sentence_model(sentence)

    def scored_frames(self, num_frames: int) -> torch.Tensor:
        """The captioned frames, out of `num_frames` (see vader.protocols.Reward)."""
        return clip_scored_frames(num_frames, self.num_captioned)

    @torch.no_grad()
    def caption(self, images: torch.Tensor) -> list[str]:
        """BLIP's greedy caption of each image `(N, 3, H, W)` in [0, 1]."""
        weights = next(self.captioner.parameters())
        if weights.device != images.device:
            self.captioner.to(images.device)  # the model follows the frames, as the other rewards'
        pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        inputs = self.processor(images=list(pixels), return_tensors="pt")
        tokens = self.captioner.generate(
            pixel_values=inputs["pixel_values"].to(images.device, weights.dtype),
            max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
        return [text.strip() for text in self.processor.batch_decode(tokens, skip_special_tokens=True)]

    @torch.no_grad()
    def embed(self, texts: list[str], device: torch.device) -> torch.Tensor:
        """Unit-length sentence embeddings `(N, D)` in float32."""
        if self.sentence.device != device:
            self.sentence.to(device)
        embedded = self.sentence.encode(texts, convert_to_tensor=True, normalize_embeddings=True,
                                        show_progress_bar=False)
        return embedded.float()

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        keys = sample_clip(frames, self.num_captioned)                     # (B, K, 3, H, W)
        b, k = keys.shape[:2]
        captions = self.caption(flatten_frames(keys))
        embedded = self.embed(captions, frames.device).view(b, k, -1)
        prompt = self.embed(list(prompts), frames.device)
        # Unit vectors, so the dot product is the cosine; rounding can put it a hair past 1.
        similarity = (embedded * prompt[:, None]).sum(-1).clamp(-1, 1)     # (B, K)
        rewards = aggregate(similarity, self.aggregation)
        info: dict[str, Any] = {"caption_similarity_mean": similarity.mean(),
                                "caption_similarity_min": similarity.min(),
                                "captions": [captions[i * k:(i + 1) * k] for i in range(b)]}
        return rewards.to(frames.dtype), info


def load_sentence_model(source: Source) -> Any:
    """A sentence-transformers model from a checked hub id or folder, frozen, in eval mode, on the
    CPU until the frames' device asks for it."""
    from sentence_transformers import SentenceTransformer
    location = str(Path(source.location).expanduser()) if source.is_local() else source.location
    try:
        # trust_remote_code=False: a checkpoint's own code never runs (as load_part does).
        model = SentenceTransformer(location, device="cpu", trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{source.key}={source.location!r}: could not load a "
                                f"sentence-transformers model: {err}") from err
    return model.requires_grad_(False).eval()
