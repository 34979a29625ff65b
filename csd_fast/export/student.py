"""The slim student: a CSD network's width-r part as an ordinary EDSR of its own.

At width r, EDSRCSD runs w = int(n_feats * r) channels and every conv uses the prefix
weight[:out, :in] (docs/method.md, section 1). Copying those prefixes into an EDSRCSD
built with n_feats = w gives a network that computes the same function at width 1 and
holds nothing else: no unused rows, no full-width storage behind views.
"""
from __future__ import annotations

import torch
from torch import nn

from ..archs.edsr_csd import EDSRCSD

__all__ = ["FixedWidth", "export_student", "slim_metadata"]

# header entries of a slim export written in the csd_fast format (see slim_metadata)
EXPORT_KIND = "slim_student"


def _unwrap(model: nn.Module) -> EDSRCSD:
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    if not isinstance(model, EDSRCSD):
        raise TypeError(f"expected an EDSRCSD model, got {type(model).__name__}")
    return model


def export_student(model: nn.Module, width: float | None = None, *,
                   backend: str | None = None) -> EDSRCSD:
    """The network `model` runs at `width`, as an EDSRCSD of int(n_feats * width) features.

    width: default the model's default_width (a loaded CSD checkpoint's), else 1.0.
    The result has the model's scale, n_resblocks, res_scale, rgb_range, img_range,
    rgb_mean, dtype and device; its weights are copies of the prefixes, so
    slim(x) == model(x, width) up to floating-point summation order. It records
    default_width = 1.0 (it runs at full width) and slim_of = (width, source n_feats).
    backend: the slim model's (EDSRCSD's default where None).
    """
    model = _unwrap(model)
    if width is None:
        width = getattr(model, "default_width", None) or 1.0
    channels = model.channels(width)  # the model's own rule and its errors
    weight = model.head.weight
    with torch.device(weight.device):
        slim = EDSRCSD(**{**model.config(), "n_feats": channels}, backend=backend)
    slim.to(dtype=weight.dtype)
    slim.shift = model.shift.detach().clone()  # the very mean shift, in its own dtype
    pairs = zip(model.sliced_convs(width), slim.sliced_convs(1.0))
    with torch.no_grad():
        for (conv, n_out, n_in), (target, _, _) in pairs:
            target.weight.copy_(conv.weight[:n_out, :n_in])
            target.bias.copy_(conv.bias[:n_out])
    slim.train(model.training)
    slim.default_width = 1.0
    slim.slim_of = (float(width), model.n_feats)
    return slim


def slim_metadata(slim: EDSRCSD, source: str | None = None) -> dict[str, str]:
    """Header entries saying that `slim` is a slim export: of which width, from what."""
    meta = {"export": EXPORT_KIND}
    slim_of = getattr(slim, "slim_of", None)
    if slim_of is not None:
        meta["export_width"] = repr(slim_of[0])
        meta["export_source_n_feats"] = str(slim_of[1])
    if source is not None:
        meta["export_source"] = source
    return meta


class FixedWidth(nn.Module):
    """model(x, width) as a module of one input, for tracers and exporters that call
    forward(x) (torch.export, ONNX). Its state dict is the model's under `model.`."""

    def __init__(self, model: nn.Module, width: float = 1.0):
        super().__init__()
        self.model = _unwrap(model)
        self.model.channels(width)  # a width the model cannot run at fails here, not in a trace
        self.width = float(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.width)
