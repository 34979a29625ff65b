"""The rule every command that writes files follows, checked before it does any work:

- no output is one of the command's inputs (a checkpoint, an image, a config), whatever name
  points at it: links, `../`, another letter case. Files are compared by device and inode, so
  an input is never replaced, not even with --overwrite;
- an output that already exists is replaced only when the user said so (--overwrite);
- two outputs never name the same file, and an output folder is a folder.

Each check raises one exception whose message names the file and what to do instead:
ValueError for an output that is an input, FileExistsError for an existing file,
IsADirectoryError / NotADirectoryError for a file or folder in the way. The CLI turns each
into one line and exit status 2.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

# (what the user called it, e.g. "--json" or "the checkpoint", the path)
Named = tuple[str, "str | os.PathLike"]


def file_id(path: str | os.PathLike) -> tuple[int, int] | None:
    """(device, inode) of an existing file, the same for every name it has; None if absent."""
    try:
        stat = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return stat.st_dev, stat.st_ino


def check_folder(label: str, folder: str | os.PathLike) -> None:
    """An output folder: absent (it will be made) or a folder, with no file in the way."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{label} {folder} exists and is not a folder")
    _check_ancestors(label, folder)


def check_outputs(outputs: Iterable[Named], inputs: Iterable[Named] = (), *, overwrite: bool = False,
                  overwrite_flag: str = "--overwrite") -> None:
    """Raise unless every output file may be written (see the module docstring).

    outputs and inputs are (label, path) pairs; a falsy path is skipped (an output turned off).
    overwrite_flag: how the caller spells the permission in its messages.
    """
    outputs = [(label, Path(path)) for label, path in outputs if path]
    by_id = {}
    for label, path in inputs:
        if path and (key := file_id(path)) is not None:
            by_id.setdefault(key, (label, Path(path)))
    _check_distinct(outputs)
    clashes = [(label, path, by_id[key]) for label, path in outputs
               if (key := file_id(path)) is not None and key in by_id]
    if clashes:
        shown = _some(_is_input(label, path, what) for label, path, what in clashes)
        raise ValueError(f"refusing to overwrite an input: {shown}; inputs are never replaced, not even "
                         f"with {overwrite_flag}: write to another file or folder")
    for label, path in outputs:
        if path.is_dir():
            raise IsADirectoryError(f"{label} {path} is a folder; give a file name")
        _check_ancestors(label, path.parent)
    existing = [(label, path) for label, path in outputs if path.exists()]
    if existing and not overwrite:
        one = len(existing) == 1
        what = " ".join(map(str, existing[0])) if one else \
            f"{len(existing)} output files ({_some(str(path) for _, path in existing)})"
        raise FileExistsError(f"{what} already exist{'s' if one else ''}; pass {overwrite_flag} to "
                              f"replace {'it' if one else 'them'} or choose another name")


def _check_ancestors(label: str, path: Path) -> None:
    """The nearest existing folder above an output is a folder, not a file in the way."""
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{label} {path}: {parent} is a file, not a folder")
            return


def _check_distinct(outputs: list[tuple[str, Path]]) -> None:
    seen: dict[object, str] = {}
    for label, path in outputs:
        key = file_id(path) or os.path.normcase(os.path.realpath(path))
        if key in seen:
            raise ValueError(f"{seen[key]} and {label} {path} are the same file; give each output its own name")
        seen[key] = f"{label} {path}"


def _is_input(label: str, path: Path, what: tuple[str, Path]) -> str:
    kind, source = what
    return f"{label} {path} is {kind}" + ("" if str(source) == str(path) else f" {source}")


def _some(items: Iterable[str], n: int = 3) -> str:
    items = list(items)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more
