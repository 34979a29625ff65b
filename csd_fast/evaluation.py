"""The SR field's evaluation protocol on benchmark folders, with a bicubic row beside
the model's (docs/method.md, section 4)."""
from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from ._atomic import atomic_write_bytes
from ._device import resolve_device
from ._dtype import CHOICES, resolve_dtype
from .archs import EDSRCSD
from .data import SRFolder, check_image, imresize, write_png
from .inference import upscale
from .metrics import psnr, quantize_uint8, ssim


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """Quantise a float image in [0, 255] as the protocol does (MATLAB's uint8())."""
    return quantize_uint8(img).to(torch.uint8)


def open_datasets(data: Sequence[str | os.PathLike | SRFolder], scale: int) -> list[SRFolder]:
    """Each folder as an SRFolder at scale (layout found, headers read, sizes checked); folders
    already opened are kept. Two sets of one name would share their rows and saved images."""
    datasets = []
    for item in data:
        dataset = item if isinstance(item, SRFolder) else SRFolder(item, scale)
        if dataset.scale != scale:
            raise ValueError(f"dataset {dataset.root} was opened at x{dataset.scale}, not x{scale}")
        datasets.append(dataset)
    names = [d.name for d in datasets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two dataset folders are both named {twice[0]!r}; their results would mix")
    return datasets


def check_images(datasets: Sequence[SRFolder]) -> None:
    """Raise the ImageReadError of the first image that would not read (check_image: a PNG's
    checksums, other formats decoded), so that a broken file is an error of its own before any
    work, not one after a progress bar and some written files."""
    for path in input_images(datasets):
        check_image(path)


def input_images(datasets: Sequence[SRFolder]) -> list[Path]:
    """Every image file the datasets read, HR and LR."""
    return [path for d in datasets for pair in d.pairs for path in (pair.hr_path, pair.lr_path)
            if path is not None]


def saved_image_paths(datasets: Sequence[SRFolder], folder: str | os.PathLike) -> list[Path]:
    """Where evaluate(save_images=folder) writes each SR image."""
    return [_saved_image(folder, d.name, pair.name) for d in datasets for pair in d.pairs]


def _saved_image(folder: str | os.PathLike, dataset: str, image: str) -> Path:
    return Path(folder) / dataset / f"{image}.png"


def evaluate(
    model: EDSRCSD | None,
    data: Sequence[str | os.PathLike | SRFolder],
    scale: int,
    *,
    width: float = 1.0,
    ensemble: bool = False,
    tile: int | None = None,
    overlap: int | None = None,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    y_channel: bool = True,
    save_images: str | os.PathLike | None = None,
    progress: bool = True,
    cuda_graphs: bool = True,
) -> dict:
    """Mean PSNR/SSIM per dataset folder, for the model (if given) and for bicubic.

    data: folders, or SRFolders from open_datasets (whose images the caller has checked).
    model: an EDSRCSD, or anything with its inference interface (export.onnx_session.OnnxModel).
    With progress, the images of the folders opened here are checked (check_images) first.
    cuda_graphs: see inference.upscale.
    Returns {set name: {"model": {"psnr", "ssim"}, "bicubic": {...}, "images": [...]}}.
    """
    if dtype not in CHOICES:
        raise ValueError(f"dtype must be one of {list(CHOICES)}, got {dtype!r}")
    device = resolve_device(device)
    autocast_dtype = resolve_dtype(dtype, device) if model is not None else None
    if model is not None:
        if model.scale != scale:
            raise ValueError(f"the model upscales x{model.scale} but --scale is {scale}")
        model = model.to(device).eval()
        model.channels(width)  # validates width before any image is read
    datasets = open_datasets(data, scale)
    if progress:
        check_images([d for d, item in zip(datasets, data) if d is not item])
    results = {}
    for dataset in datasets:
        rows = []
        bar = tqdm(total=len(dataset), desc=f"{dataset.name} x{scale}", disable=not progress,
                   unit="img", leave=False)
        for name, lr, hr in dataset:
            row = {"image": name}
            bicubic = to_uint8(imresize(lr, scale))  # uint8 in: MATLAB's integer path
            row["bicubic_psnr"] = psnr(bicubic, hr, crop=scale, y_channel=y_channel)
            row["bicubic_ssim"] = ssim(bicubic, hr, crop=scale, y_channel=y_channel)
            if model is not None:
                x = model.to_model_range(lr.to(device).float().unsqueeze(0))
                sr = upscale(model, x, width, ensemble=ensemble, tile=tile, overlap=overlap,
                             autocast_dtype=autocast_dtype, cuda_graphs=cuda_graphs)
                sr = to_uint8(model.from_model_range(sr[0].cpu()))
                row["psnr"] = psnr(sr, hr, crop=scale, y_channel=y_channel)
                row["ssim"] = ssim(sr, hr, crop=scale, y_channel=y_channel)
                if save_images is not None:
                    write_png(_saved_image(save_images, dataset.name, name), sr)
            rows.append(row)
            bar.update(1)
        bar.close()
        summary = {"bicubic": _means(rows, "bicubic_"), "images": rows}
        if model is not None:
            summary["model"] = _means(rows, "")
        results[dataset.name] = summary
    return results


def _means(rows: list[dict], prefix: str) -> dict:
    return {m: sum(r[prefix + m] for r in rows) / len(rows) for m in ("psnr", "ssim")}


def format_table(results: dict, label: str = "model") -> str:
    lines = [f"{'dataset':<12} {'method':<24} {'PSNR':>8} {'SSIM':>7}"]
    for name, summary in results.items():
        for method, key in (("bicubic", "bicubic"), (label, "model")):
            if key in summary:
                m = summary[key]
                lines.append(f"{name:<12} {method:<24} {m['psnr']:>8.2f} {m['ssim']:>7.4f}")
    return "\n".join(lines)


def write_reports(results: dict, json_path: str | os.PathLike | None,
                  csv_path: str | os.PathLike | None, meta: dict) -> None:
    """JSON with everything, CSV with one row per image; both written atomically."""
    if json_path:
        atomic_write_bytes(json_path, json.dumps({"meta": meta, "results": results}, indent=1).encode())
    if csv_path:
        buffer = io.StringIO()
        fields = ["dataset", "image", "psnr", "ssim", "bicubic_psnr", "bicubic_ssim"]
        writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for name, summary in results.items():
            for row in summary["images"]:
                writer.writerow({"dataset": name, **row})
        atomic_write_bytes(csv_path, buffer.getvalue().encode())
