"""A reward computed by a separate server, so a heavy reward model (a 2-8B vision-language model)
can live on other GPUs, served by vLLM, SGLang or `python -m vader.serve_reward`:

    reward_fn=remote reward_fn.url=http://host:8008/score                       # our own server
    reward_fn=remote reward_fn.protocol=videoalign reward_fn.url=http://host:8000/reward
    reward_fn=remote reward_fn.protocol=openai reward_fn.url=http://host:8000/v1/chat/completions \
        reward_fn.model=CodeGoat24/UnifiedReward-qwen-7b

Request and response shapes (`protocol`):
- `vader`: one POST per batch, {"prompts": [...], "encoding": "...", "size": [H, W], "videos": [...]}, answered
  {"rewards": [...], "info": {...}} (vader/serve_reward.py; videos as vader.io.wire encodes them).
- `videoalign`: one POST per batch, {"prompts": [...], "videos": [<base64 mp4>, ...]}, answered
  {"rewards": [{"VQ": .., "MQ": .., "TA": .., "Overall": ..}, ...]}, the per-video dicts
  VideoAlign's `VideoVLMRewardInference.reward` returns; `score_key` picks one (Overall).
  VideoAlign ships no HTTP server: this is the shape for a thin wrapper around that call.
- `openai`: an OpenAI-compatible chat endpoint (vLLM, SGLang serving UnifiedReward or any VLM),
  one POST per video (a chat request holds one conversation): `question` with the prompt, then
  `max_frames` frames evenly spaced as PNG `image_url` parts; the score is the last number in the
  reply matching `score_pattern`. The question is ours, not UnifiedReward's: set the model's own.

Failures are never a made-up score. A connection refused, a timeout, an HTTP 429 or 5xx is
retried `retries` times with exponential backoff (`backoff`, 2·backoff, ...), then raises
RemoteRewardError naming the URL; any other HTTP error, a reply that is not JSON, the wrong number
of scores or a non-finite one raises at once, with what came back. Not differentiable: train it
with GRPO or online DPO.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from typing import Any

import torch

from rewards import check_frames
from vader.protocols import info_numbers
from vader.io.wire import ENCODINGS, encode_video

PROTOCOLS = ("vader", "videoalign", "openai")
QUESTION = ("Here are frames of a video generated from the prompt: \"{prompt}\". Rate how well the "
            "video matches the prompt and how good it looks, from 1 (worst) to 5 (best). Answer with "
            "'Final Score: <number>'.")


class RemoteRewardError(RuntimeError):
    """The reward server could not give a score."""


class _Batch:
    """`vader` and `videoalign`: one request per batch."""

    def __init__(self, reward: "RemoteReward"):
        self.r = reward

    def requests(self, frames: torch.Tensor, prompts: list[str]) -> list[dict]:
        r = self.r
        return [{"prompts": [str(p) for p in prompts], "encoding": r.encoding, "size": list(frames.shape[-2:]),
                 "videos": [encode_video(v, r.encoding, r.fps) for v in frames]}]

    def scores(self, replies: list[Any]) -> tuple[list[Any], dict[str, float]]:
        reply = replies[0]
        if not isinstance(reply, dict) or not isinstance(reply.get("rewards"), list):
            raise self.r.garbage(f"expected an object with a list 'rewards', got {reply!r:.300}")
        info = reply.get("info")
        return reply["rewards"], info_numbers(info) if isinstance(info, dict) else {}


class _VideoAlign(_Batch):
    def requests(self, frames: torch.Tensor, prompts: list[str]) -> list[dict]:
        return [{"prompts": [str(p) for p in prompts],
                 "videos": [encode_video(v, "mp4", self.r.fps) for v in frames]}]

    def scores(self, replies: list[Any]) -> tuple[list[Any], dict[str, float]]:
        rows, _ = super().scores(replies)
        key = self.r.score_key
        if not all(isinstance(row, dict) and key in row for row in rows):
            raise self.r.garbage(f"expected per-video objects with {key!r} (reward_fn.score_key), got {rows!r:.300}")
        info = {f"videoalign_{k}": sum(float(row[k]) for row in rows) / len(rows)
                for k in rows[0] if isinstance(rows[0][k], (int, float))} if rows else {}
        return [row[key] for row in rows], info


class _Chat:
    """`openai`: one chat completion per video."""

    def __init__(self, reward: "RemoteReward"):
        self.r = reward

    def requests(self, frames: torch.Tensor, prompts: list[str]) -> list[dict]:
        r, out = self.r, []
        for video, prompt in zip(frames, prompts):
            index = torch.linspace(0, video.shape[0] - 1, min(r.max_frames, video.shape[0])).round().long()
            images = encode_video(video[index], "png")
            content = [{"type": "text", "text": r.question.format(prompt=str(prompt))}] + [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}} for png in images]
            out.append({"model": r.model, "messages": [{"role": "user", "content": content}],
                        "temperature": 0, "max_tokens": r.max_tokens})
        return out

    def scores(self, replies: list[Any]) -> tuple[list[Any], dict[str, float]]:
        values = []
        for reply in replies:
            try:
                text = reply["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                raise self.r.garbage(f"expected a chat completion (choices[0].message.content), got {reply!r:.300}") from None
            found = re.findall(self.r.score_pattern, text or "")
            if not found:
                raise self.r.garbage(f"no score matching {self.r.score_pattern!r} (reward_fn.score_pattern) "
                                     f"in the reply {text!r:.300}")
            values.append(found[-1])
        return values, {}


ADAPTERS = {"vader": _Batch, "videoalign": _VideoAlign, "openai": _Chat}


class RemoteReward:
    """Scores videos by asking a server; see the module docstring."""

    differentiable = False

    def __init__(self, url: str, protocol: str = "vader", frames: str | int = "all", encoding: str = "uint8",
                 timeout: float = 120.0, retries: int = 3, backoff: float = 1.0, score_key: str = "Overall",
                 model: str | None = None, question: str = QUESTION,
                 score_pattern: str = r"-?\d+(?:\.\d+)?", max_frames: int = 8, max_tokens: int = 64,
                 fps: int = 8, api_key_env: str | None = "OPENAI_API_KEY") -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"reward_fn.protocol={protocol!r}: choose one of {PROTOCOLS}")
        if encoding not in ENCODINGS:
            raise ValueError(f"reward_fn.encoding={encoding!r}: choose one of {ENCODINGS}")
        if not url or not url.startswith(("http://", "https://")):
            raise ValueError(f"reward_fn.url={url!r}: give the server's address, e.g. http://host:8008/score")
        if protocol == "openai" and not model:
            raise ValueError("reward_fn.protocol=openai needs reward_fn.model (the served model's name)")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError(f"reward_fn: timeout={timeout} must be > 0, retries={retries} and backoff={backoff} >= 0")
        self.url, self.protocol, self.frames, self.encoding = url, protocol, frames, encoding
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.score_key, self.model, self.question, self.score_pattern = score_key, model, question, score_pattern
        self.max_frames, self.max_tokens, self.fps = max_frames, max_tokens, fps
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.adapter = ADAPTERS[protocol](self)

    def garbage(self, what: str) -> RemoteRewardError:
        return RemoteRewardError(f"reward server {self.url} answered something that is not a score: {what}")

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        start = time.perf_counter()
        answers = [self._post(body) for body in self.adapter.requests(frames, prompts)]
        values, info = self.adapter.scores([reply for reply, _ in answers])
        if len(values) != len(prompts):
            raise self.garbage(f"{len(values)} scores for {len(prompts)} videos")
        try:
            scores = [float(v) for v in values]
        except (TypeError, ValueError):
            raise self.garbage(f"scores {values!r:.300}") from None
        if not all(math.isfinite(s) for s in scores):
            raise self.garbage(f"non-finite scores {scores}")
        numbers = {**info, "remote_seconds": time.perf_counter() - start, "remote_retries": float(sum(retried for _, retried in answers))}
        return torch.tensor(scores, dtype=torch.float32, device=frames.device), numbers

    def _post(self, body: dict) -> tuple[Any, int]:
        """The server's JSON answer to `body`, and how many retries it took."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(urllib.request.Request(self.url, data, headers),
                                            timeout=self.timeout) as response:
                    text = response.read().decode("utf-8", "replace")
            except urllib.error.HTTPError as err:
                detail = err.read().decode("utf-8", "replace")[:300]
                if err.code == 429 or err.code >= 500:
                    last = f"HTTP {err.code}: {detail}"
                    continue
                raise RemoteRewardError(f"reward server {self.url} refused the request: HTTP {err.code}: {detail}") from None
            except OSError as err:  # refused, reset, unreachable, timed out (URLError is one too)
                last = str(getattr(err, "reason", err)) or type(err).__name__
                continue
            try:
                return json.loads(text), attempt
            except json.JSONDecodeError:
                raise self.garbage(f"not JSON: {text!r:.300}") from None
        raise RemoteRewardError(f"reward server {self.url} gave no answer after {self.retries + 1} tries "
                                f"(timeout {self.timeout:g} s each): {last}. Is it running? Start ours with "
                                "`python -m vader.serve_reward reward_fn=<name> --port <port>`")
