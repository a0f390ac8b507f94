"""The FID Inception-v3 network, built here so that FID needs no torchvision and no download.

FID numbers are only comparable with published ones when they come from the exact network
pytorch-fid uses: the TensorFlow 2015-12-05 Inception graph ported to PyTorch
(``pt_inception-2015-12-05-6726825d.pth``). That graph differs from torchvision's Inception-v3
in ways that change the features: average pools that leave the zero padding out of the mean,
a max pool (not an average pool) in the pool branch of the last block, and a 1008-way
classifier. Module names follow torchvision's, because the weights file's keys are those names.

Feature dims follow pytorch-fid's ``BLOCK_INDEX_BY_DIM``: 64 after the first max pool, 192
after the second, 768 after Mixed_6e (the input of the auxiliary classifier), 2048 after the
final average pool. Each is average-pooled to one vector per image.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import InputError
from engine.training.checkpoints import sha256

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
# torch.hub names files by the first 8 hex digits of their SHA-256: a file that starts
# otherwise is not the release pytorch-fid published (or was re-saved).
WEIGHTS_SHA256_PREFIX = "6726825d"
WEIGHTS_ENV = "MEDSYNTH_FID_WEIGHTS"
INPUT_SIZE = 299
DIMS = (64, 192, 768, 2048)
BATCH = 50  # images per forward pass: the batches the processes of a sharded evaluation run are these


class _ConvBN(nn.Module):
    """Convolution without bias, batch norm, ReLU: the unit every Inception layer is made of."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        # TensorFlow's batch-norm epsilon; PyTorch's default 1e-5 would shift every activation.
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's SAME-padded average pool divides by the number of real pixels under the
    # window, so border pixels are not darkened by the padding zeros.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):
    """35x35 block (Mixed_5b/c/d): 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, cin: int, pool_out: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1 = _ConvBN(cin, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_tf_avg_pool(x)),
        ], 1)


class _ReductionB(nn.Module):
    """Mixed_6a: 35x35 -> 17x17 by strided convolutions beside a strided max pool."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class _BlockC(nn.Module):
    """17x17 block (Mixed_6b..e): 7x7 convolutions factored into 1x7 and 7x1."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([self.branch1x1(x), single, double, self.branch_pool(_tf_avg_pool(x))], 1)


class _ReductionD(nn.Module):
    """Mixed_7a: 17x17 -> 8x8."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            deep = layer(deep)
        return torch.cat([
            self.branch3x3_2(self.branch3x3_1(x)),
            deep,
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class _BlockE(nn.Module):
    """8x8 block (Mixed_7b/c): 3x3 convolutions split into parallel 1x3 and 3x1 outputs.

    ``max_pool`` reproduces the TF graph's last block, whose pool branch max-pools; FID
    features differ noticeably if it average-pools as the Inception paper describes.
    """

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(mid), self.branch3x3_2b(mid),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pooled),
        ], 1)


class FIDInception(nn.Module):
    """Inception-v3 as in TensorFlow's FID graph, returning pooled features by width.

    Input: images (N, 1 or 3, H, W) with values in [0, 1]. They are resized to 299x299
    (bilinear, align_corners=False) and scaled to [-1, 1] here, as pytorch-fid does, so
    callers never have to know the network's input convention.
    """

    # Which named layers run in each stage; a stage's output is the feature of that width.
    _STAGES: dict[int, tuple[str, ...]] = {
        64: ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"),
        192: ("Conv2d_3b_1x1", "Conv2d_4a_3x3"),
        768: ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"),
        2048: ("Mixed_7a", "Mixed_7b", "Mixed_7c"),
    }

    def __init__(self, dims: tuple[int, ...] = (2048,)) -> None:
        super().__init__()
        self.dims = _check_dims(dims)
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _BlockA(192, 32)
        self.Mixed_5c = _BlockA(256, 64)
        self.Mixed_5d = _BlockA(288, 64)
        self.Mixed_6a = _ReductionB(288)
        self.Mixed_6b = _BlockC(768, 128)
        self.Mixed_6c = _BlockC(768, 160)
        self.Mixed_6d = _BlockC(768, 160)
        self.Mixed_6e = _BlockC(768, 192)
        self.Mixed_7a = _ReductionD(768)
        self.Mixed_7b = _BlockE(1280, max_pool=False)
        self.Mixed_7c = _BlockE(2048, max_pool=True)
        # Never used for features; present so the published weights file loads strictly.
        self.fc = nn.Linear(2048, 1008)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images of any size and 1 or 3 channels -> the (N, 3, 299, 299) [-1, 1] input."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images (N, 1 or 3, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return 2.0 * x - 1.0

    def forward(self, x: torch.Tensor, dims: tuple[int, ...] | None = None) -> dict[int, torch.Tensor]:
        wanted = self.dims if dims is None else _check_dims(dims)
        x = self.prepare(x)
        out: dict[int, torch.Tensor] = {}
        for width, names in self._STAGES.items():
            for name in names:
                x = getattr(self, name)(x)
            if width in (64, 192):
                x = F.max_pool2d(x, kernel_size=3, stride=2)
            if width in wanted:
                out[width] = F.adaptive_avg_pool2d(x, 1).flatten(1)
            if width == max(wanted):
                break  # the deeper stages cost most of the time and nothing asked for them
        return out


def _check_dims(dims: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    dims = tuple(sorted({int(d) for d in dims}))
    if not dims or any(d not in DIMS for d in dims):
        raise ValueError(f"FID feature dims must be among {DIMS}, got {dims}")
    return dims


def find_weights(explicit: str | Path | None = None) -> Path | None:
    """Where the FID Inception weights are: the given path, $MEDSYNTH_FID_WEIGHTS, or torch hub's cache.

    A path the user named (argument or environment) is returned even when missing, so that
    loading reports that file instead of quietly using another one. Never downloads.
    """
    if explicit is not None and str(explicit):
        return Path(explicit)
    env = os.environ.get(WEIGHTS_ENV, "")
    if env:
        return Path(env)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE
    return cached if cached.is_file() else None


def weights_sha256(path: str | Path) -> str:
    return sha256(path)


def load_fid_inception(path: str | Path) -> FIDInception:
    """The network with the weights read from ``path`` (a state dict file), in eval mode."""
    try:
        # weights_only: a weights file must never be able to run code when read.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types here (OSError, UnpicklingError, RuntimeError, ...)
        raise InputError(path, f"cannot read FID Inception weights ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise InputError(path, f"not a state dict of FID Inception weights (holds a {type(state).__name__})")
    net = FIDInception()
    expected = set(net.state_dict())
    missing = sorted(k for k in expected - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise InputError(path, f"not the FID Inception weights ({WEIGHTS_FILE}): {len(missing)} keys missing, "
                               f"{len(unexpected)} unexpected, e.g. {first!r}")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = str(e).splitlines()[-1].strip()  # torch's last line names the tensor and both shapes
        raise InputError(path, f"FID Inception weights do not fit the network: {detail}") from e
    return net.eval()


@torch.no_grad()
def inception_features(images: np.ndarray, dims: tuple[int, ...], net: FIDInception,
                       batch: int = BATCH, device: str = "cpu") -> dict[int, np.ndarray]:
    """Pooled Inception features {dim: (N, dim) float64} of float images (N, C, H, W) in [0, 1]."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1 or 3, H, W), got shape {images.shape}")
    dims = _check_dims(dims)
    parts: dict[int, list[np.ndarray]] = {d: [np.zeros((0, d))] for d in dims}
    was_training = net.training
    # Batch-norm with batch statistics would make each image's features depend on its batch.
    net.eval().to(device)
    try:
        for start in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch], np.float32)).to(device)
            for d, f in net(x, dims).items():
                parts[d].append(f.cpu().numpy().astype(np.float64))
    finally:
        net.train(was_training)
    return {d: np.concatenate(p) for d, p in parts.items()}


def _central_indices(length: int, count: int) -> np.ndarray:
    # The central half only: the outer slices of a scan are mostly air or background, and
    # near-empty slices would dominate the statistics without saying anything about anatomy.
    fractions = np.linspace(0.25, 0.75, count) if count > 1 else np.array([0.5])
    return np.round(fractions * (length - 1)).astype(int)


def volume_slices(volumes: np.ndarray, per_axis: int = 8, size: int | None = None) -> np.ndarray:
    """2D slices of volumes (N, C, D, H, W) through all three axes, for a 2D feature network.

    Returns (N * 3 * per_axis, C, size, size) float32, ordered volume, then axis (D, H, W),
    then position; ``per_axis`` slices per axis are spread evenly over the central half.
    Every slice is resized (bilinear) to ``size`` (default: the largest of D, H, W) so that
    slices of non-cubic volumes can be batched together.
    """
    vol = np.asarray(volumes, np.float32)
    if vol.ndim != 5:
        raise ValueError(f"expected volumes (N, C, D, H, W), got shape {vol.shape}")
    if per_axis < 1:
        raise ValueError(f"per_axis must be at least 1, got {per_axis}")
    n, c = vol.shape[:2]
    side = int(size or max(vol.shape[2:]))
    t = torch.from_numpy(np.ascontiguousarray(vol))
    per_volume = []
    for axis in (2, 3, 4):
        idx = torch.from_numpy(_central_indices(vol.shape[axis], per_axis))
        # (N, C, ..., k, ...) -> (N, k, C, a, b): the chosen slices, each a 2D image.
        picked = t.index_select(axis, idx).movedim(axis, 1)
        flat = picked.reshape(n * per_axis, c, *picked.shape[3:])
        if tuple(flat.shape[-2:]) != (side, side):
            flat = F.interpolate(flat, size=(side, side), mode="bilinear", align_corners=False)
        per_volume.append(flat.reshape(n, per_axis, c, side, side))
    return torch.stack(per_volume, 1).reshape(n * 3 * per_axis, c, side, side).numpy()
