"""Frozen VGG19 feature extractor for CSD's contrastive loss.

The module keeps torchvision's `features.<i>` key layout, so torchvision's ImageNet
file (vgg19-dcbb9e9d.pth) loads into it directly, without torchvision installed.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

VGG19_FILE = "vgg19-dcbb9e9d.pth"
# Configuration "E" up to relu5_1 (torchvision features[0:30]).
_LAYERS = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512]
# CSD reads relu1_1, relu2_1, relu3_1, relu4_1, relu5_1: the ends of these slices.
SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def torchvision_cache_path() -> Path:
    """Where torchvision's downloader keeps the ImageNet VGG19 weights."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(torch_home) / "hub" / "checkpoints" / VGG19_FILE


class VGG19Features(nn.Module):
    """relu1_1 .. relu5_1 feature maps of VGG19, frozen.

    normalize=False feeds images as given (the CSD reference passes SR outputs on the
    [0, 255] scale straight in); normalize=True expects [0, 255] images and applies
    ImageNet's mean and std to them / 255, as VGG was trained.
    """

    def __init__(self, normalize: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _LAYERS:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=False)]
                channels = item
        self.features = nn.Sequential(*layers)
        assert len(self.features) == SLICES[-1][1]
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG19Features":
        return super().train(False)  # always frozen: no dropout/bn, but keep eval semantics

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.normalize:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out = []
        for start, end in SLICES:
            for layer in self.features[start:end]:
                x = layer(x)
            out.append(x)
        return out


def load_vgg19(path: str | os.PathLike | None = None, *, random_weights: bool = False,
               normalize: bool = False) -> VGG19Features:
    """VGG19Features with ImageNet weights from `path` or torchvision's cache file.

    random_weights=True skips the file (tests, demos): the caller must say so in its log.
    """
    vgg = VGG19Features(normalize)
    if random_weights:
        return vgg
    candidates = [Path(path)] if path is not None else [torchvision_cache_path()]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise FileNotFoundError(
            f"VGG19 ImageNet weights not found (looked at: {', '.join(map(str, candidates))}). "
            f"The contrastive loss needs torchvision's {VGG19_FILE}: pass its path "
            "(`csd-fast train vgg_weights=PATH`) or place it at the torchvision cache path "
            "above; nothing is downloaded at run time. random_vgg=true trains with random VGG "
            "weights instead (tests and demos only)."
        )
    state = torch.load(found, map_location="cpu", weights_only=True)
    wanted = {k: v for k, v in state.items() if k.startswith("features.")
              and int(k.split(".")[1]) < SLICES[-1][1]}
    missing = sorted(set(vgg.state_dict()) - set(wanted))
    if missing:
        raise ValueError(f"{found}: not a torchvision VGG19 state dict (missing {missing[:4]})")
    for key, value in wanted.items():
        expected = vgg.state_dict()[key].shape
        if value.shape != expected:
            raise ValueError(f"{found}: {key} has shape {tuple(value.shape)}, VGG19 needs {tuple(expected)}")
    vgg.load_state_dict(wanted)
    return vgg
