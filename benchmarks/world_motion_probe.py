"""Does a world model use the motion word? Its denoiser's x0 estimate from pure noise (t = 999)
and from mostly noise (t = 700) is the model's mean video for a prompt; if the model follows
"moves left", that mean drifts left over the frames. This prints, per motion word, the drift of
the object's centroid in that mean (last frame minus first, pixels of a 32-pixel frame) and how
far the x0 estimate moves when only the motion word changes, beside the same for a colour word.

    python -m benchmarks.world_motion_probe                    # the shipped model
    python -m benchmarks.world_motion_probe --weights my_world

Every number printed is measured by this run (docs/world.md records one with its date).
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from vader.world.grammar import BACKGROUNDS, MOTIONS, Scene  # noqa: E402


@torch.no_grad()
def mean_videos(backbone, prompts: list[str], t: int, num_noises: int) -> torch.Tensor:
    """(len(prompts), T, 3, H, W): each prompt's x0 estimate, decoded, averaged over noises."""
    out = []
    for prompt in prompts:
        noise = torch.randn(backbone.latent_shape(num_noises, 8, 32, 32),
                            generator=torch.Generator().manual_seed(0))
        steps = torch.full((num_noises,), t)
        v = backbone.predict(backbone.unet, noise, steps, backbone.encode_prompts([prompt] * num_noises))
        alpha = backbone._alphas(steps, noise)
        x0 = alpha.sqrt() * noise - (1 - alpha).sqrt() * v  # v-prediction's x0
        out.append(backbone.decode(x0).float().mean(0))
    return torch.stack(out)


def centroid_drift(video: torch.Tensor, background: str) -> tuple[float, float]:
    """(dx, dy): the object's centroid (weighted by distance from the background colour), last
    frame minus first, in pixels; +x is right, +y is down."""
    bg = torch.tensor(BACKGROUNDS[background]).view(1, 3, 1, 1)
    weight = (video - bg).abs().sum(1)                     # (T, H, W)
    weight = weight / weight.sum((-1, -2), keepdim=True)
    grid = torch.arange(video.shape[-1], dtype=torch.float32)
    cx, cy = (weight.sum(-2) * grid).sum(-1), (weight.sum(-1) * grid).sum(-1)
    return float(cx[-1] - cx[0]), float(cy[-1] - cy[0])


def spread(means: torch.Tensor) -> float:
    """The largest pixel difference between one prompt's mean video and the prompts' average."""
    return (means - means.mean(0)).abs().max().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="a world model folder (default: the shipped one)")
    parser.add_argument("--noises", type=int, default=16)
    args = parser.parse_args(argv)
    from backbones.world import world
    backbone = world(args.weights)
    colour, shape, background = "red", "circle", "black"
    for t in (999, 700):
        prompts = [Scene(colour, shape, m, background).prompt for m in MOTIONS]
        means = mean_videos(backbone, prompts, t, args.noises)
        print(f"t={t}: drift of the mean video's object over the clip (dx, dy in pixels; "
              f"the training clips travel 10-14 pixels)")
        for motion, video in zip(MOTIONS, means):
            dx, dy = centroid_drift(video, background)
            print(f"  {motion:12s} dx {dx:+6.2f}  dy {dy:+6.2f}")
        colours = [Scene(c, shape, next(iter(MOTIONS)), background).prompt for c in ("red", "blue", "green")]
        by_motion, by_colour = spread(means), spread(mean_videos(backbone, colours, t, args.noises))
        print(f"  largest pixel change when only the motion word changes: {by_motion:.4f}; "
              f"when only the colour word changes: {by_colour:.4f}")


if __name__ == "__main__":
    main()
