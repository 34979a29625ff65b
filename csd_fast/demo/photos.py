"""The demo's images: photographs bundled in scikit-image's wheel, or a user's folder, copied
as PNG into an hr_folder layout (the readers make the LR with MATLAB's bicubic)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .settings import MAX_SIDE, SCALE, DemoError

# RGB photographs shipped inside scikit-image's wheel (skimage/data); the held-out ones are
# fixed by name so every run scores the same images. motorcycle_left/right are one scene
# seen twice, so both stay on the training side.
TRAIN_PHOTOS = ("rocket.jpg", "motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg",
                "ihc.png", "retina.jpg", "color.png")
HELDOUT_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png")


def _skimage_spec():
    # find_spec locates the package without importing it (importing skimage takes seconds)
    return importlib.util.find_spec("skimage")


def bundled_photos() -> tuple[list[Path], list[Path]]:
    """(training, held-out) photographs from the installed scikit-image package."""
    spec = _skimage_spec()
    if spec is None or not spec.submodule_search_locations:
        raise DemoError("the demo's default photographs come from scikit-image, which is not installed: "
                        "`pip install scikit-image`, or pass --data DIR with your own HR images")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [n for n in TRAIN_PHOTOS + HELDOUT_PHOTOS if not (data / n).is_file()]
    if missing:
        raise DemoError(f"scikit-image at {data.parent} lacks {', '.join(missing)}; reinstall it "
                        "(`pip install --force-reinstall scikit-image`) or pass --data DIR")
    return [data / n for n in TRAIN_PHOTOS], [data / n for n in HELDOUT_PHOTOS]


def user_photos(folder: Path) -> tuple[list[Path], list[Path]]:
    """The first 80% (by name) train, the rest is held out; at least one of each."""
    from ..data.images import IMAGE_SUFFIXES, is_image_file

    if not folder.is_dir():
        raise DemoError(f"--data {folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if is_image_file(p))
    if len(files) < 2:
        raise DemoError(f"--data {folder}: found {len(files)} image(s) ({', '.join(IMAGE_SUFFIXES)}); "
                        "the demo needs at least 2, one to train on and one to hold out")
    n_train = min(max(1, int(len(files) * 0.8)), len(files) - 1)
    return files[:n_train], files[n_train:]


def prepare(files: list[Path], folder: Path, min_side: int) -> list[str]:
    """Copy files into folder as PNGs whose sides are multiples of the scale."""
    from ..data import read_image, write_png

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for path in files:
        hr = read_image(path)
        h, w = (min(s, MAX_SIDE) // SCALE * SCALE for s in hr.shape[1:])
        if min(h, w) < min_side:
            raise DemoError(f"{path} is {hr.shape[2]}x{hr.shape[1]}; the demo needs images of at "
                            f"least {min_side}x{min_side} pixels (a smaller --patch lowers this)")
        top, left = (hr.shape[1] - h) // 2, (hr.shape[2] - w) // 2
        write_png(folder / f"{path.stem}.png", hr[:, top:top + h, left:left + w].contiguous())
        names.append(path.stem)
    return names
