"""A slim student's state dict in EDSR-PyTorch's and BasicSR's key layouts.

The key names come from the loader's own tables (csd_fast.checkpoint.layouts.LAYOUTS,
docs/method.md section 6), so what is written here is what load_checkpoint reads. Each
layout also gets the constructor arguments its project's EDSR needs for the file: the
state dict alone does not say res_scale (and, for BasicSR, img_range and rgb_mean).
"""
from __future__ import annotations

import io

import torch

from ..archs.edsr_csd import EDSRCSD
from ..checkpoint.layouts import LAYOUTS

__all__ = ["TORCH_LAYOUTS", "constructor_args", "layout_state_dict", "torch_file_bytes"]

TORCH_LAYOUTS = ("edsr_pytorch", "basicsr")


def _check_layout(layout: str) -> None:
    if layout not in TORCH_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {list(TORCH_LAYOUTS)}")


def layout_state_dict(slim: EDSRCSD, layout: str) -> dict[str, torch.Tensor]:
    """slim's weights under `layout`'s key names, as CPU tensors of their own.

    EDSR-PyTorch also stores its MeanShift 1x1 convs: identity weights and biases
    -/+ img_range * rgb_mean (its rgb_range plays the part of our img_range). BasicSR
    keeps the mean out of the state dict.
    """
    _check_layout(layout)
    lay = LAYOUTS[layout]
    out: dict[str, torch.Tensor] = {}
    dtype = slim.head.weight.dtype
    if lay.mean_shift:
        shift = torch.tensor(slim.rgb_mean, dtype=torch.float64) * slim.img_range
        eye = torch.eye(3, dtype=dtype).view(3, 3, 1, 1)
        out["sub_mean.weight"], out["sub_mean.bias"] = eye, (-shift).to(dtype)
        out["add_mean.weight"], out["add_mean.bias"] = eye.clone(), shift.to(dtype)
    for key, tensor in slim.state_dict().items():
        module, _, kind = key.rpartition(".")
        name = f"{lay.module(module, slim.n_resblocks)}.{kind}"
        out[name] = tensor.detach().to("cpu", copy=True).contiguous()
    return out


def torch_file_bytes(slim: EDSRCSD, layout: str) -> bytes:
    """What torch.save writes for that layout: EDSR-PyTorch's plain state dict, or
    BasicSR's {"params": state_dict}."""
    state = layout_state_dict(slim, layout)
    buffer = io.BytesIO()
    torch.save({"params": state} if layout == "basicsr" else state, buffer)
    return buffer.getvalue()


def constructor_args(slim: EDSRCSD, layout: str) -> dict:
    """The arguments that build the project's EDSR for this file.

    EDSR-PyTorch: its `args` fields (input images in [0, rgb_range]). BasicSR: the
    keyword arguments of basicsr.archs.edsr_arch.EDSR (input images in [0, 1]).
    """
    _check_layout(layout)
    if layout == "edsr_pytorch":
        return dict(scale=slim.scale, n_resblocks=slim.n_resblocks, n_feats=slim.n_feats,
                    res_scale=slim.res_scale, rgb_range=slim.img_range, n_colors=3)
    return dict(num_in_ch=3, num_out_ch=3, num_feat=slim.n_feats, num_block=slim.n_resblocks,
                upscale=slim.scale, res_scale=slim.res_scale, img_range=slim.img_range,
                rgb_mean=list(slim.rgb_mean))
