"""Temporal LPIPS: how much each frame differs, perceptually, from the frame before once motion
is accounted for. LPIPS (Zhang et al., CVPR 2018, the `lpips` package) between frame t+1 and
frame t warped onto it by optical flow (rewards/flow.py), as a spatial map averaged over the
pixels the forward-backward check finds visible, then over the pairs. The reward is minus that
distance: higher is smoother, 0 the best.

The `lpips` package ships its calibrated linear layers; the feature network under them (AlexNet by
default, VGG-16 or SqueezeNet 1.1) is torchvision's ImageNet model, which the package would
download on its own. Here it loads like every other weight: `net_weights: default` (the torch hub
cache, else a download; offline without it, an error that names the file), a state-dict file
of the torchvision model, or `random` (untrained: tests of the code path only).

Differentiable in the frames through the warp and LPIPS (the flow is a constant). A still video
scores 0, the best: `maximised_by_still_video` says so.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F

from rewards import check_frames
from rewards.common import torchvision_state
from rewards.flow import check_consecutive, flow_estimator, pair_flows, visible_mean, warp_previous

# lpips' feature network -> the torchvision weights enum of its published ImageNet weights
# (alexnet, vgg16, squeezenet1_1: the models lpips builds).
NETS = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}
_CACHE: dict[tuple, Any] = {}


def load_lpips(net: str = "alex", net_weights: str = "default") -> torch.nn.Module:
    """lpips.LPIPS (spatial map, its own linear layers) with the feature network's weights
    loaded here; frozen, once per process."""
    if net not in NETS:
        raise ValueError(f"t_lpips net={net!r}: use one of {sorted(NETS)}")
    key = (net, net_weights)
    if key not in _CACHE:
        import lpips
        import torchvision.models as tvm
        with warnings.catch_warnings():  # lpips 0.1.4 still passes torchvision's retired `pretrained`
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(net=net, spatial=True, pnet_rand=True, verbose=False)
        if net_weights != "random":
            state = torchvision_state(getattr(tvm, NETS[net]).IMAGENET1K_V1, net_weights, "net_weights")
            # lpips splits the torchvision model's `features` into slices that keep each layer's
            # index as its name: slice2.3.weight is features.3.weight.
            own = {name: state[f"features.{name.split('.', 1)[1]}"]
                   for name in model.net.state_dict()}
            model.net.load_state_dict(own)
        model.requires_grad_(False).eval()
        _CACHE[key] = model
    return _CACHE[key]


class TemporalLPIPS:
    differentiable = True
    maximised_by_still_video = True

    def __init__(self, frames: str | int = "all", net: str = "alex", net_weights: str = "default",
                 flow: str = "raft_small", flow_weights: str = "default", num_flow_updates: int = 12) -> None:
        check_consecutive("t_lpips", frames)
        self.frames = frames
        self.lpips = load_lpips(net, net_weights)
        self.estimator = flow_estimator(flow, flow_weights, num_flow_updates)

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        if min(frames.shape[-2:]) < 32:
            raise ValueError(f"t_lpips needs frames of at least 32 pixels a side (LPIPS' feature "
                             f"network), got {tuple(frames.shape[-2:])}")
        flows = pair_flows(frames, self.estimator)
        x = frames.float()
        b, pairs = x.shape[0], x.shape[1] - 1
        self.lpips.to(x.device)
        later = x[:, 1:].flatten(0, 1) * 2 - 1                      # LPIPS takes [-1, 1]
        warped = warp_previous(x, flows).flatten(0, 1) * 2 - 1
        distance = self.lpips(later, warped)                          # (N, 1, h, w)
        mask = flows.mask.flatten(0, 1).to(distance.dtype)
        if distance.shape[-2:] != mask.shape[-2:]:
            distance = F.interpolate(distance, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        t_lpips = visible_mean(distance, mask).view(b, pairs).mean(1)
        return (-t_lpips).to(frames.dtype), {"t_lpips": t_lpips.detach().mean()}
