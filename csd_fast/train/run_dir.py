"""The run folder's life: inputs checked before it is touched, resume allowed only into the
same run, and what a failed fresh run created taken away again."""
from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

from .._outputs import Named, check_folder, file_id
from .._outputs import check_outputs as guard
from ..data import SRFolder
from .config import ConfigError, TrainConfig
from .state import load_state


# what a run writes into out_dir, besides tensorboard/ (whose event files a resume appends to)
RUN_FILES = ("config.yaml", "log.csv", "last.pt", "best.pt", "best.safetensors", "curves.png")


def check_paths(cfg: TrainConfig, resume: bool = False, inputs: Iterable[Named] = ()) -> None:
    """The data folders hold datasets (image headers read, sizes checked) and out_dir can take
    the run (check_outputs): a typo fails in a second, before anything is built or written.
    inputs: files the caller read besides those the config names (the --config file)."""
    if cfg.train_data is None:
        raise ConfigError("train_data: a training folder is required")
    images = []
    for key in ("train_data", "val_data"):
        if getattr(cfg, key) is not None:
            try:
                folder = SRFolder(getattr(cfg, key), cfg.scale)
            except (OSError, ValueError) as err:
                raise ConfigError(f"{key}: {err}") from err
            images += [(f"a {key} image", path) for pair in folder.pairs
                       for path in (pair.hr_path, pair.lr_path) if path is not None]
    check_outputs(cfg, resume, [*inputs, *images])


def check_outputs(cfg: TrainConfig, resume: bool, inputs: Iterable[Named] = ()) -> None:
    """out_dir is a folder or absent; a new run finds none of RUN_FILES there, since a resume
    alone may replace them (its own); no file the run writes is one it reads
    (teacher_checkpoint, vgg_weights, the images, the caller's inputs), on a resume neither,
    except the run's own config.yaml given back as --config. Nothing is written before."""
    out = Path(cfg.out_dir)
    try:
        check_folder("out_dir:", out)
    except NotADirectoryError as err:
        raise ConfigError(str(err)) from None
    last = out / "last.pt"
    resuming = resume and last.is_file()
    if last.exists() and not resuming:
        raise FileExistsError(f"{out} already holds a run ({last}); pass resume (--resume) to "
                              "continue it or choose another out_dir")
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and not resuming:
        raise FileExistsError(f"out_dir {out} already holds {', '.join(existing)}, which a new run "
                              "would replace; choose another out_dir")
    read = [("teacher_checkpoint", cfg.teacher_checkpoint), ("vgg_weights", cfg.vgg_weights), *inputs]
    if resuming:  # the run's own config, rewritten with the same run-defining settings
        own = file_id(out / "config.yaml")
        read = [(label, path) for label, path in read if not path or file_id(path) != own]
    guard([("out_dir file", out / name) for name in RUN_FILES], read, overwrite=True)


class OutDirUndo:
    """Removes what a fresh run added to out_dir, when called after the run failed before any
    of its checkpoints was written: no config and header-only log left to mistake for a run.
    Entries that were there before (and out_dir itself, if it existed) are never touched."""

    def __init__(self, out: Path, checkpoints: tuple[Path, ...]):
        self.out, self.checkpoints = out, checkpoints
        self.before = set(out.iterdir()) if out.is_dir() else None
        # out_dir and the parents that a mkdir(parents=True) will create for it
        self.new_folders = [d for d in (out, *out.parents) if not d.exists()]

    def __call__(self) -> None:
        if any(c.exists() and (self.before is None or c not in self.before) for c in self.checkpoints):
            return  # a checkpoint of this run exists: keep the run
        if self.before is None:
            created = [self.out] if self.out.exists() else []
        else:
            created = sorted(set(self.out.iterdir()) - self.before)
        try:
            for entry in created:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        except OSError as err:  # never hide the run's own error
            print(f"csd_fast train: warning: could not remove the failed run's files in {self.out}: "
                  f"{err}", file=sys.stderr)
            return
        for folder in self.new_folders[1:]:  # parents made for out_dir, innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()  # only while empty: never what another process put there
        if created:
            print(f"csd_fast train: the run failed before its first checkpoint; removed what it "
                  f"had written in {self.out}", file=sys.stderr)


# what a resume may not change: the model, and what decides each iteration's draws
RUN_DEFINING = ("stage", "scale", "preset", "n_resblocks", "n_feats", "res_scale", "rgb_range", "width",
                "batch", "seed", "negatives", "neg_num", "exclude_self")


def check_resumable(cfg: TrainConfig, stored: dict, path: Path) -> None:
    """A resume must continue the same run: the model, stage, batch, seed and negatives stay."""
    now = cfg.to_dict()
    for key in RUN_DEFINING:
        if key in stored and stored[key] != now[key]:
            raise ValueError(f"{key}: {path} was written with {key}={stored[key]!r}, the config now "
                             f"says {now[key]!r}; a resumed run must keep it")


def saved_iteration(path: Path) -> int | str:
    try:
        return load_state(path)["iteration"]
    except Exception as err:  # report, don't mask the loss error
        return f"unreadable: {err}"
