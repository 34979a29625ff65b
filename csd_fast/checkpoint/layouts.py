"""State-dict layouts of EDSR checkpoints users already have, mapped onto EDSRCSD.

Every layout is the same network under other key names (docs/method.md, section 6), so one
table per layout says where each EDSRCSD conv lives; n_resblocks, n_feats and scale
are read off the tensors, and the expected shapes come from an EDSRCSD built on the
meta device, so the architecture is described in one place only.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..archs.edsr_csd import RGB_MEAN, EDSRCSD

# Preferred first: BasicSR keeps both when EMA is on, and the EMA weights are the ones it evaluates.
WRAPPER_KEYS = ("params_ema", "params", "model_state_dict", "state_dict", "model")
CONFIG_KEYS = ("scale", "n_resblocks", "n_feats", "res_scale", "rgb_range", "img_range", "rgb_mean")
STRUCTURE_KEYS = ("scale", "n_resblocks", "n_feats")
MEAN_SHIFT_KEYS = ("sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias")


@dataclass(frozen=True)
class Layout:
    """Where each EDSRCSD conv lives in a layout ({i}: block, {n}: n_resblocks, {j}: index)."""

    name: str
    head: str
    conv1: str
    conv2: str
    body_conv: str
    up: str
    up_stride: int  # Sequential indices skip the PixelShuffle modules
    tail: str
    mean_shift: bool
    defaults: dict = field(default_factory=dict)

    def module(self, ours: str, n_resblocks: int) -> str:
        """Their module name for one of ours (head, body.i.conv1, upsampler.j, ...)."""
        parts = ours.split(".")
        if parts[0] == "body":
            pattern = self.conv1 if parts[2] == "conv1" else self.conv2
            return pattern.format(i=int(parts[1]))
        if parts[0] == "upsampler":
            return self.up.format(j=int(parts[1]) * self.up_stride)
        if parts[0] == "body_conv":
            return self.body_conv.format(n=n_resblocks)
        return {"head": self.head, "tail": self.tail}[parts[0]]


LAYOUTS = {
    layout.name: layout
    for layout in (
        Layout("csd_fast", "head", "body.{i}.conv1", "body.{i}.conv2", "body_conv",
               "upsampler.{j}", 1, "tail", False, dict(rgb_range=255.0, img_range=255.0)),
        Layout("edsr_pytorch", "head.0", "body.{i}.body.0", "body.{i}.body.2", "body.{n}",
               "tail.0.{j}", 2, "tail.1", True, dict(rgb_range=255.0, img_range=255.0)),
        # BasicSR feeds [0, 1] images and applies (x - mean) * 255 outside the state dict.
        Layout("basicsr", "conv_first", "body.{i}.conv1", "body.{i}.conv2", "conv_after_body",
               "upsample.{j}", 2, "conv_last", False, dict(rgb_range=1.0, img_range=255.0)),
        Layout("csd_reference", "head", "body.{i}.conv1", "body.{i}.conv2", "body_conv",
               "upsampler.blocks.{j}", 1, "tail_conv", True, dict(rgb_range=255.0, img_range=255.0)),
    )
}


def _unwrap(obj: Mapping, param_key: str | None) -> Mapping:
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a state dict (names to tensors), got {type(obj).__name__}")
    if param_key is not None:
        if param_key not in obj:
            raise ValueError(f"param_key {param_key!r} not in the checkpoint; top-level keys: {_some(obj)}")
        return _unwrap(obj[param_key], None)
    for key in WRAPPER_KEYS:
        if isinstance(obj.get(key), Mapping):
            return obj[key]
    loose = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if loose:
        raise ValueError(
            f"no state dict found: entries {_some(loose)} are not tensors and none of the "
            f"wrapper keys {list(WRAPPER_KEYS)} holds one; pass param_key= to pick the entry"
        )
    return obj


def _strip_module(state: Mapping) -> dict[str, torch.Tensor]:
    """Drop the `module.` prefixes DataParallel / DistributedDataParallel add."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = str(key)
        while name.startswith("module."):
            name = name[len("module."):]
        if name in out:
            raise ValueError(f"keys {key!r} and another both become {name!r} once `module.` is stripped")
        out[name] = value
    return out


def _some(keys, n: int = 8) -> str:
    keys = list(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(repr(k) for k in keys[:n]) + more


def _prepare(state_dict: Mapping, param_key: str | None) -> dict[str, torch.Tensor]:
    state = _strip_module(_unwrap(state_dict, param_key))
    loose = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if loose:
        raise ValueError(f"state dict entries {_some(loose)} are not tensors")
    return state


def _detect(state: Mapping) -> str:
    scores = {
        name: sum(f"{m}.weight" in state for m in (lay.head, lay.tail, lay.up.format(j=0)))
        for name, lay in LAYOUTS.items()
    }
    best = max(scores.values())
    winners = [name for name, score in scores.items() if score == best]
    if best < 2 or len(winners) > 1:
        raise ValueError(
            f"unknown checkpoint layout; known layouts: {sorted(LAYOUTS)}; "
            f"keys found: {_some(state)}"
        )
    return winners[0]


def detect_layout(state_dict: Mapping, param_key: str | None = None) -> str:
    """Name of the layout a state dict (possibly wrapped, possibly `module.`-prefixed) is in."""
    return _detect(_prepare(state_dict, param_key))


def _indices(state: Mapping, pattern: str) -> list[int]:
    """Integers filling the single {} slot of `pattern` among the keys present."""
    head, tail = (re.escape(p) for p in pattern.split("{}"))
    regex = re.compile(f"{head}(\\d+){tail}")
    return sorted(int(m.group(1)) for key in state if (m := regex.fullmatch(key)))


def _infer_structure(state: Mapping, lay: Layout) -> dict:
    head = state.get(f"{lay.head}.weight")
    if head is None:
        raise ValueError(f"missing key {lay.head + '.weight'!r} ({lay.name} layout)")
    n_feats = head.shape[0]
    blocks = _indices(state, lay.conv1.replace("{i}", "{}") + ".weight")
    n_resblocks = blocks[-1] + 1 if blocks else 0
    stages = [j // lay.up_stride for j in _indices(state, lay.up.replace("{j}", "{}") + ".weight")
              if j % lay.up_stride == 0]
    first = f"{lay.up.format(j=0)}.weight"
    if first not in state:
        raise ValueError(f"missing key {first!r} ({lay.name} layout)")
    out_channels = state[first].shape[0]
    if out_channels == 9 * n_feats:
        scale = 3
    elif out_channels == 4 * n_feats:
        scale = 2 ** (stages[-1] + 1)
    else:
        raise ValueError(
            f"{first!r} has shape {tuple(state[first].shape)}; expected ({4 * n_feats}, {n_feats}, 3, 3) "
            f"for x2/x4 or ({9 * n_feats}, {n_feats}, 3, 3) for x3 (n_feats={n_feats} from the head)"
        )
    return dict(scale=scale, n_resblocks=n_resblocks, n_feats=n_feats)


def _close(a: torch.Tensor, b: torch.Tensor, scale: float) -> bool:
    return bool(torch.allclose(a, b, rtol=1e-5, atol=1e-6 * max(scale, 1.0)))


def _mean_from_shift(state: Mapping, config: dict, pinned: set[str]) -> None:
    """Check the stored MeanShift convs and fold them into config (rgb_mean, img_range).

    EDSRCSD computes x * img_range / rgb_range - img_range * rgb_mean, so a sub_mean of
    identity weight and bias -b is the same network when img_range * rgb_mean == b.
    """
    present = [k for k in MEAN_SHIFT_KEYS if k in state]
    if not present:
        return
    missing = [k for k in MEAN_SHIFT_KEYS if k not in state]
    if missing:
        raise ValueError(f"missing key {missing[0]!r}: mean-shift entries come as a set {MEAN_SHIFT_KEYS}")
    eye = torch.eye(3, dtype=torch.float64).view(3, 3, 1, 1)
    for name in ("sub_mean", "add_mean"):
        weight = state[f"{name}.weight"].detach().to("cpu", torch.float64)
        if weight.shape != eye.shape or not _close(weight, eye, 1.0):
            raise ValueError(
                f"{name}.weight is not the identity (shape {tuple(weight.shape)}): the checkpoint "
                "normalises by an rgb_std other than 1, which EDSRCSD does not support"
            )
    shift = -state["sub_mean.bias"].detach().to("cpu", torch.float64).reshape(-1)
    back = state["add_mean.bias"].detach().to("cpu", torch.float64).reshape(-1)
    if shift.numel() != 3 or back.numel() != 3 or not _close(shift, back, float(shift.abs().max())):
        raise ValueError(
            f"sub_mean.bias {(-shift).tolist()} and add_mean.bias {back.tolist()} are not opposite; "
            "EDSRCSD adds back exactly the mean it subtracts"
        )
    mean = torch.tensor(config["rgb_mean"], dtype=torch.float64)
    if _close(shift, config["img_range"] * mean, config["img_range"]):
        return
    if "rgb_mean" in pinned:
        raise ValueError(
            f"rgb_mean={list(config['rgb_mean'])} at img_range={config['img_range']:g} disagrees with the "
            f"checkpoint's sub_mean shift {shift.tolist()}"
        )
    if "img_range" not in pinned:
        # A checkpoint trained with another --rgb_range: take that range rather than a scaled-down mean.
        for candidate in (1.0, 255.0):
            if _close(shift, candidate * torch.tensor(RGB_MEAN, dtype=torch.float64), candidate):
                config["img_range"] = candidate
                if "rgb_range" not in pinned:
                    config["rgb_range"] = candidate
                config["rgb_mean"] = list(RGB_MEAN)
                return
    config["rgb_mean"] = (shift / config["img_range"]).tolist()


def _build_config(state: Mapping, lay: Layout, overrides: dict) -> dict:
    unknown = set(overrides) - set(CONFIG_KEYS)
    if unknown:
        raise TypeError(f"unknown hyper-parameter(s) {sorted(unknown)}; known: {list(CONFIG_KEYS)}")
    structure = _infer_structure(state, lay)
    for key in STRUCTURE_KEYS:
        if key in overrides and overrides[key] != structure[key]:
            raise ValueError(
                f"{key}={overrides[key]!r} was requested but the {lay.name} weights have "
                f"{key}={structure[key]}"
            )
    # res_scale is in no foreign layout: 32 blocks is the paper's EDSR (res_scale 0.1) and
    # every student cut from it; other depths are EDSR-baseline-like (1)
    paper = structure["n_resblocks"] == 32
    config = dict(structure, res_scale=0.1 if paper else 1.0, rgb_mean=list(RGB_MEAN), **lay.defaults)
    config.update({k: v for k, v in overrides.items() if v is not None})
    config["rgb_mean"] = [float(m) for m in config["rgb_mean"]]
    if lay.mean_shift:
        _mean_from_shift(state, config, {k for k, v in overrides.items() if v is not None})
    return {k: config[k] for k in CONFIG_KEYS}


def convert_state_dict(
    state_dict: Mapping,
    layout: str = "auto",
    *,
    param_key: str | None = None,
    **overrides,
) -> tuple[dict[str, torch.Tensor], dict]:
    """(EDSRCSD state dict, EDSRCSD config) from a state dict in any known layout.

    overrides pin hyper-parameters (res_scale, rgb_range, img_range, rgb_mean); pinning
    scale, n_resblocks or n_feats only checks them against the tensors. The returned
    tensors are the input's own (not copies).
    """
    state = _prepare(state_dict, param_key)
    if layout == "auto":
        layout = _detect(state)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known layouts: {sorted(LAYOUTS)} or 'auto'")
    lay = LAYOUTS[layout]
    config = _build_config(state, lay, overrides)
    with torch.device("meta"):
        expected = EDSRCSD(**config).state_dict()
    names = {}
    for key in expected:
        module, _, kind = key.rpartition(".")
        names[key] = f"{lay.module(module, config['n_resblocks'])}.{kind}"
    ours: dict[str, torch.Tensor] = {}
    for key, ref in expected.items():
        theirs = names[key]
        if theirs not in state:
            raise ValueError(f"missing key {theirs!r} ({layout} layout, needed for EDSRCSD {key!r})")
        tensor = state[theirs]
        if not tensor.is_floating_point():
            raise ValueError(f"{theirs!r} must be a floating-point tensor, got {tensor.dtype}")
        if tensor.shape != ref.shape:
            raise ValueError(
                f"{theirs!r} has shape {tuple(tensor.shape)} but expected {tuple(ref.shape)} for "
                f"scale={config['scale']}, n_feats={config['n_feats']}, n_resblocks={config['n_resblocks']}"
            )
        ours[key] = tensor
    used = set(names.values())
    if lay.mean_shift:
        used |= set(MEAN_SHIFT_KEYS)
    extra = [k for k in state if k not in used]
    if extra:
        raise ValueError(f"unexpected key(s) for the {layout} layout: {_some(extra)}")
    return ours, config
