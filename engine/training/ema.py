"""The exponential moving average of the weights that previews and samples use."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class EMA:
    """Exponential moving average of the weights, with the usual warm-up of the decay."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        sd = model.state_dict()
        self.keys = [k for k, v in sd.items() if v.is_floating_point()]
        # The parameters themselves, not state_dict()'s aliases of their storage: moving the model to the GPU
        # or to channels-last gives each parameter new storage, which an alias would not follow.
        params = dict(model.named_parameters())
        self.live = [params.get(k, sd[k]) for k in self.keys]
        self.shadow = {k: v.detach().clone().float() for k, v in sd.items()}
        self.shadow_list = [self.shadow[k] for k in self.keys]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow_list, [t.float() for t in self.live], 1.0 - d)

    def load(self, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            self.shadow[k].copy_(v)


@contextlib.contextmanager
def ema_weights(net: torch.nn.Module, ema: EMA) -> Iterator[None]:
    """Swap the EMA weights in for previews, then put the training weights back."""
    backup = {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.load_state_dict({k: v.to(backup[k].dtype) for k, v in ema.shadow.items()})
    try:
        yield
    finally:
        net.load_state_dict(backup)
