"""LR/HR image pairs from the folder layouts SR datasets ship in, found automatically."""
from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .images import IMAGE_SUFFIXES, ImageReadError, image_size, is_image_file, read_image

LAYOUTS = ("div2k", "edsr_benchmark", "basicsr", "selfexsr", "hr_folder")


class DatasetError(ValueError):
    """A dataset folder that cannot be turned into LR/HR pairs."""


@dataclass(frozen=True)
class ImagePair:
    name: str
    hr_path: Path
    lr_path: Path | None  # None: LR is made from HR with MATLAB bicubic


@dataclass
class _Found:
    layout: str
    name: str
    pairs: list[ImagePair]


# --- folder helpers ---------------------------------------------------------------------

def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def _by_name(files: list[Path], name_of: Callable[[Path], str | None], where: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in files:
        name = name_of(f)
        if name is None:
            continue
        if name in out:
            raise DatasetError(f"{where}: two images are both named {name!r}: {out[name].name}, {f.name}")
        out[name] = f
    return out


def _scale_dir(parent: Path, pattern: str, scale: int, what: str) -> Path:
    """The child of parent named pattern % scale, or an error listing the scales that exist."""
    regex = re.compile("^" + re.escape(pattern).replace("%d", r"(\d+)") + "$")
    found = sorted(int(m.group(1)) for d in parent.iterdir() if d.is_dir() and (m := regex.match(d.name)))
    folder = parent / (pattern % scale)
    if not folder.is_dir():
        have = ", ".join(f"x{s}" for s in found) or "none"
        raise DatasetError(f"{what} has no x{scale} data (no {folder}); scales present: {have}")
    return folder


def _pair_up(hr: dict[str, Path], lr: dict[str, Path] | None, hr_dir: Path, lr_dir: Path | None
             ) -> list[ImagePair]:
    if not hr:
        raise DatasetError(f"no HR images ({', '.join(IMAGE_SUFFIXES)}) in {hr_dir}")
    if lr is not None:
        missing = [n for n in hr if n not in lr]
        if missing:
            shown = ", ".join(str(hr[n].name) for n in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise DatasetError(f"{len(missing)} HR image(s) in {hr_dir} have no LR image in {lr_dir}: {shown}")
    return [ImagePair(n, hr[n], lr[n] if lr is not None else None) for n in sorted(hr)]


def _stem_without(suffix: str) -> Callable[[Path], str]:
    return lambda p: p.stem[: -len(suffix)] if suffix and p.stem.endswith(suffix) else p.stem


# --- one function per layout: (root, scale) -> _Found, or None when root is not that layout ---

def _selfexsr(root: Path, scale: int) -> _Found | None:
    srf = re.compile(r"^image_SRF_(\d+)$")
    if m := srf.match(root.name):  # pointed at one scale's folder
        if int(m.group(1)) != scale:
            raise DatasetError(f"{root} holds x{m.group(1)} images but the scale asked for is x{scale}")
        root = root.parent
    elif not any(d.is_dir() and srf.match(d.name) for d in root.iterdir()):
        return None
    folder = _scale_dir(root, "image_SRF_%d", scale, str(root))
    files = _images(folder)
    tag = re.compile(rf"^(.+)_SRF_{scale}_(HR|LR)$")

    def name_of(kind: str) -> Callable[[Path], str | None]:
        def name(p: Path) -> str | None:
            found = tag.match(p.stem)
            return found.group(1) if found and found.group(2) == kind else None
        return name

    hr, lr = _by_name(files, name_of("HR"), folder), _by_name(files, name_of("LR"), folder)
    return _Found("selfexsr", root.name, _pair_up(hr, lr, folder, folder))


def _hr_beside_lr(layout: str, root: Path, hr_name: str, lr_parent: str, lr_pattern: str,
                  lr_suffix: str, scale: int) -> _Found | None:
    """Layouts with an HR folder beside one LR folder per scale (EDSR-PyTorch, BasicSR)."""
    if root.name == hr_name and (root.parent / lr_parent).is_dir():
        root = root.parent  # pointed at the HR folder
    hr_dir, lr_root = root / hr_name, root / lr_parent
    if not (hr_dir.is_dir() and lr_root.is_dir()):
        return None
    lr_dir = _scale_dir(lr_root, lr_pattern, scale, str(root))
    hr = _by_name(_images(hr_dir), lambda p: p.stem, hr_dir)
    lr = _by_name(_images(lr_dir), _stem_without(lr_suffix), lr_dir)
    return _Found(layout, root.name, _pair_up(hr, lr, hr_dir, lr_dir))


def _edsr_benchmark(root: Path, scale: int) -> _Found | None:
    return _hr_beside_lr("edsr_benchmark", root, "HR", "LR_bicubic", "X%d", f"x{scale}", scale)


def _basicsr(root: Path, scale: int) -> _Found | None:
    if not ((root / "GTmod12").is_dir() or root.name == "GTmod12"):
        return None
    return _hr_beside_lr("basicsr", root, "GTmod12", ".", "LRbicx%d", "", scale)


def _div2k(root: Path, scale: int) -> _Found | None:
    """DIV2K; with both splits present the training split is used. Without any
    DIV2K_<split>_LR_bicubic folder, LR is made from HR (that is how DIV2K made it)."""
    if m := re.match(r"^DIV2K_(train|valid)_HR$", root.name):
        root, splits = root.parent, [m.group(1)]
    else:
        splits = [s for s in ("train", "valid") if (root / f"DIV2K_{s}_HR").is_dir()]
    if not splits:
        return None
    split = splits[0]
    hr_dir, lr_root = root / f"DIV2K_{split}_HR", root / f"DIV2K_{split}_LR_bicubic"
    hr = _by_name(_images(hr_dir), lambda p: p.stem, hr_dir)
    if not lr_root.is_dir():
        return _Found("div2k", f"DIV2K_{split}", _pair_up(hr, None, hr_dir, None))
    lr_dir = _scale_dir(lr_root, "X%d", scale, str(lr_root))
    lr = _by_name(_images(lr_dir), _stem_without(f"x{scale}"), lr_dir)
    return _Found("div2k", f"DIV2K_{split}", _pair_up(hr, lr, hr_dir, lr_dir))


def _hr_folder(root: Path, scale: int) -> _Found | None:
    files = _images(root)
    if not files:
        return None
    return _Found("hr_folder", root.name, _pair_up(_by_name(files, lambda p: p.stem, root), None, root, None))


_FINDERS = {"div2k": _div2k, "edsr_benchmark": _edsr_benchmark, "basicsr": _basicsr,
            "selfexsr": _selfexsr, "hr_folder": _hr_folder}
_LOOKED_FOR = ("DIV2K_train_HR/ or DIV2K_valid_HR/ (div2k); HR/ + LR_bicubic/X<s>/ (edsr_benchmark); "
               "GTmod12/ + LRbicx<s>/ (basicsr); image_SRF_<s>/ (selfexsr); image files directly "
               f"inside ({', '.join(IMAGE_SUFFIXES)}) (hr_folder)")


def _find(root: str | os.PathLike, scale: int, layout: str) -> _Found:
    root = Path(root)
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if layout != "auto" and layout not in _FINDERS:
        raise ValueError(f"unknown layout {layout!r}; choose 'auto' or one of {', '.join(LAYOUTS)}")
    if not root.exists():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"dataset path {root} is not a folder")
    if not any(True for _ in root.iterdir()):
        raise DatasetError(f"dataset folder {root} is empty")
    for name in LAYOUTS if layout == "auto" else (layout,):
        if (found := _FINDERS[name](root, scale)) is not None:
            return found
    if layout == "auto":
        raise DatasetError(f"{root} matches no known dataset layout; looked for {_LOOKED_FOR}")
    raise DatasetError(f"{root} is not in the {layout} layout; expected "
                       + next(s for s in _LOOKED_FOR.split("; ") if f"({layout})" in s))


def find_pairs(root: str | os.PathLike, scale: int, layout: str = "auto") -> list[ImagePair]:
    """The LR/HR pairs of a dataset folder at one scale, sorted by name.

    root may be the set's folder or its HR folder; layout is "auto" or one of LAYOUTS.
    """
    return _find(root, scale, layout).pairs


# --- decoding ---------------------------------------------------------------------------

def bicubic_lr(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """LR as MATLAB's uint8 imresize(hr, 1/scale) makes it: bicubic, rounded, saturated."""
    from .imresize import imresize  # written separately; imported only when needed

    lr = imresize(hr, 1 / scale)  # uint8 in: MATLAB's integer path, rounded between passes
    return (lr + 0.5).floor().clamp(0, 255).to(torch.uint8)  # MATLAB rounds half away from 0


def _check_sizes(pair: ImagePair, hr_hw: tuple[int, int], lr_hw: tuple[int, int] | None,
                 scale: int) -> tuple[int, int]:
    """The HR size cropped to a multiple of scale; errors when LR does not fit it."""
    h, w = hr_hw[0] // scale * scale, hr_hw[1] // scale * scale
    if h == 0 or w == 0:
        raise DatasetError(f"HR image {pair.hr_path} ({hr_hw[1]}x{hr_hw[0]}) is smaller than the scale x{scale}")
    if lr_hw is not None and tuple(lr_hw) != (h // scale, w // scale):
        raise DatasetError(
            f"LR image {pair.lr_path} is {lr_hw[1]}x{lr_hw[0]} (WxH) but HR image {pair.hr_path} is "
            f"{hr_hw[1]}x{hr_hw[0]}, so x{scale} LR must be {w // scale}x{h // scale}")
    return h, w


def check_pair(pair: ImagePair, scale: int) -> tuple[int, int]:
    """The LR (h, w) of a pair, from file headers only (no decoding)."""
    lr_hw = image_size(pair.lr_path) if pair.lr_path is not None else None
    h, w = _check_sizes(pair, image_size(pair.hr_path), lr_hw, scale)
    return h // scale, w // scale


def _probe(pair: ImagePair, scale: int) -> None:
    """Decode both files to find unreadable ones; LR is not made here (that is slow)."""
    lr = read_image(pair.lr_path) if pair.lr_path is not None else None
    _check_sizes(pair, tuple(read_image(pair.hr_path).shape[1:]),
                 tuple(lr.shape[1:]) if lr is not None else None, scale)


def load_pair(pair: ImagePair, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lr, hr) uint8 (3, h, w) and (3, scale*h, scale*w); HR cropped top-left to fit."""
    hr = read_image(pair.hr_path)
    lr = read_image(pair.lr_path) if pair.lr_path is not None else None
    h, w = _check_sizes(pair, tuple(hr.shape[1:]), tuple(lr.shape[1:]) if lr is not None else None, scale)
    if (h, w) != tuple(hr.shape[1:]):
        hr = hr[:, :h, :w].contiguous()
    return (lr if lr is not None else bicubic_lr(hr, scale)), hr


class SRFolder(Dataset):
    """A benchmark or training folder as (name, lr uint8 (3,h,w), hr uint8 (3,H,W)) items.

    Sizes are checked from file headers up front. With skip_unreadable, every image is
    decoded once here so that broken ones can be left out (with a warning) before
    len() is fixed; otherwise a broken image is an ImageReadError.
    """

    def __init__(self, root: str | os.PathLike, scale: int, layout: str = "auto",
                 skip_unreadable: bool = False):
        found = _find(root, scale, layout)
        self.root, self.scale, self.layout, self.name = Path(root), scale, found.layout, found.name
        self.pairs: list[ImagePair] = []
        for pair in found.pairs:
            try:
                _probe(pair, scale) if skip_unreadable else check_pair(pair, scale)
            except ImageReadError as err:
                if not skip_unreadable:
                    raise
                warnings.warn(f"skipping {pair.name}: {err}", stacklevel=2)
                continue
            self.pairs.append(pair)
        if not self.pairs:
            raise DatasetError(f"no readable images left in {root}")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor, torch.Tensor]:
        pair = self.pairs[index]
        lr, hr = load_pair(pair, self.scale)
        return pair.name, lr, hr

    def __repr__(self) -> str:
        return f"SRFolder({str(self.root)!r}, x{self.scale}, layout={self.layout!r}, {len(self)} images)"
