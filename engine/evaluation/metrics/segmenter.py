"""The segmentation network of the utility measures: a small MONAI UNet, its training and its predictions.

Conventions (the project's): images float32 (N, C, *spatial) scaled to [0, 1] by the
caller, masks uint8 label maps (N, *spatial) with 0 = background.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from torch import nn

from engine.evaluation.metrics.dice import CHUNK
from engine.evaluation.metrics.training_loop import BATCH, Progress, as_images, device_of, fit, seeded
from engine.jobs import Requests

SEG_STEPS = 300


class _Padded(nn.Module):
    """Pads the input up to a multiple the UNet's strides divide, and crops the output back.

    MONAI's UNet needs every spatial size divisible by the product of its strides; user
    data (e.g. 28 px MedMNIST at three levels, or odd volume crops) need not be. Cropping
    inside the module keeps the loss and the prediction on the real pixels only.
    """

    def __init__(self, net: nn.Module, multiple: int) -> None:
        super().__init__()
        self.net = net
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        pad: list[int] = []
        for s in reversed(spatial):
            pad += [0, -s % self.multiple]
        if any(pad):
            x = F.pad(x, pad, mode="replicate")
        y = self.net(x)
        return y[(..., *(slice(0, s) for s in spatial))]


def build_segmenter(in_channels: int, num_labels: int, spatial_dims: int = 2,
                    channels: Sequence[int] = (16, 32, 64), strides: Sequence[int] = (2, 2)) -> nn.Module:
    """A small MONAI UNet wrapped to accept any spatial size."""
    net = UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_labels,
               channels=tuple(channels), strides=tuple(strides), num_res_units=1)
    return _Padded(net, int(np.prod(strides)))


def train_segmenter(images: np.ndarray, masks: np.ndarray, num_labels: int, *, steps: int = SEG_STEPS,
                    batch: int = BATCH, seed: int = 0, device: str | torch.device = "cpu",
                    spatial_dims: int | None = None, lr: float = 1e-2, augment: bool = False,
                    progress: Progress | None = None, requests: Requests | None = None) -> nn.Module:
    """Train a small UNet (DiceCE loss, AdamW) on image/mask pairs; returns it in eval mode.

    ``spatial_dims`` defaults to what the images' shape says. Raises Cancelled
    when ``requests`` asks to stop.
    """
    x = as_images(images, spatial_dims)
    dims = x.dim() - 2
    y = torch.as_tensor(np.asarray(masks)).long()
    if tuple(y.shape) != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"masks {tuple(y.shape)} do not match images {tuple(x.shape)}")
    if y.numel() and (int(y.max()) >= num_labels or int(y.min()) < 0):
        raise ValueError(f"masks hold labels outside 0..{num_labels - 1}")
    net = seeded(seed, lambda: build_segmenter(x.shape[1], num_labels, dims))
    # batch=True sums the Dice over the batch: lesion-free images then add no 0/0 terms,
    # and small lesions are not swamped by per-image noise.
    dice_ce = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    return fit(net, dice_ce, x, y[:, None], steps=steps, batch=batch, seed=seed, lr=lr,
               device=torch.device(device), augment=augment, progress=progress, requests=requests)


@torch.no_grad()
def segment(model: nn.Module, images: np.ndarray, batch: int = CHUNK) -> np.ndarray:
    """Label maps uint8 (N, *spatial) predicted by a segmenter."""
    x = as_images(images)
    model.eval()
    dev = device_of(model)
    out = [model(x[i:i + batch].to(dev)).argmax(1).to(torch.uint8).cpu() for i in range(0, len(x), batch)]
    if not out:
        return np.zeros((0, *x.shape[2:]), np.uint8)
    return torch.cat(out).numpy()
