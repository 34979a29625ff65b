"""The run folder's life: inputs checked before it is touched, resume allowed only into the
same run, and what a failed fresh run created taken away again."""
from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

from ..data import SRFolder
from .config import ConfigError, TrainConfig
from .state import load_state


def check_paths(cfg: TrainConfig) -> None:
    """The data folders hold datasets (image headers read, sizes checked) and out_dir can be a
    folder: a typo fails in a second, before anything is built or written."""
    if cfg.train_data is None:
        raise ConfigError("train_data: a training folder is required")
    for key in ("train_data", "val_data"):
        if getattr(cfg, key) is not None:
            try:
                SRFolder(getattr(cfg, key), cfg.scale)
            except (OSError, ValueError) as err:
                raise ConfigError(f"{key}: {err}") from err
    if Path(cfg.out_dir).exists() and not Path(cfg.out_dir).is_dir():
        raise ConfigError(f"out_dir: {cfg.out_dir} exists and is not a folder")


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
