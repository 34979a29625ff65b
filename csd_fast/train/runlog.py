"""The run's scalar log, written on rank 0: log.csv always, TensorBoard event files too when
the tensorboard package is installed. Both hold the same scalars at the same iterations."""
from __future__ import annotations

import csv
import importlib
import io
from pathlib import Path

from .._atomic import atomic_write_bytes

LOG_FIELDS = ("iteration", "total", "l1_student", "l1_teacher", "contrastive", "lr", "it_per_s",
              "val_psnr_student", "val_psnr_teacher")
# CSV text of each float field (the TensorBoard scalars keep full precision); others: str()
CSV_FORMATS = {"total": ".6g", "l1_student": ".6g", "l1_teacher": ".6g", "contrastive": ".6g",
               "it_per_s": ".4g"}
TENSORBOARD_TAGS = {"total": "loss/total", "l1_student": "loss/l1_student",
                    "l1_teacher": "loss/l1_teacher", "contrastive": "loss/contrastive",
                    "lr": "train/lr", "it_per_s": "train/it_per_s",
                    "val_psnr_student": "val/psnr_student", "val_psnr_teacher": "val/psnr_teacher"}


class CsvLog:
    """One row per logged iteration, flushed as written; a resume drops rows past its start."""

    def __init__(self, path: Path, start: int):
        self.path = path
        rows = []
        if start > 0 and path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= start]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(path, buf.getvalue().encode())
        self.file = path.open("a", newline="")
        self.writer = csv.DictWriter(self.file, LOG_FIELDS)

    def write(self, row: dict) -> None:
        self.writer.writerow({k: format(row[k], CSV_FORMATS.get(k, "")) if k in row else ""
                              for k in LOG_FIELDS})
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorBoardLog:
    """The CSV's scalars as TensorBoard events in folder, under TENSORBOARD_TAGS."""

    def __init__(self, folder: Path, start: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides, in every reader, the events of earlier writers in this folder at
        # steps >= start + 1: those a killed run logged past its last checkpoint, or a whole
        # earlier run when this one starts from 0. It keeps what the CSV keeps (rows <= start).
        self.writer = SummaryWriter(str(folder), purge_step=start + 1)

    def write(self, row: dict) -> None:
        for key, tag in TENSORBOARD_TAGS.items():
            if key in row:
                self.writer.add_scalar(tag, float(row[key]), int(row["iteration"]))
        self.writer.flush()  # as the CSV: a killed run keeps everything it logged

    def close(self) -> None:
        self.writer.close()


def tensorboard_missing() -> str | None:
    """None when torch.utils.tensorboard imports, else why not."""
    try:
        importlib.import_module("torch.utils.tensorboard")  # imports the tensorboard package
    except ImportError as err:
        return str(err)
    except Exception as err:  # a broken install: an optional logger must not stop training
        return f"importing tensorboard failed ({type(err).__name__}: {err})"
    return None


class RunLog:
    """log.csv plus, with tensorboard=True and the package installed, <out>/tensorboard/."""

    def __init__(self, out: Path, start: int, tensorboard: bool = True):
        self.logs: list = [CsvLog(out / "log.csv", start)]
        if tensorboard:
            missing = tensorboard_missing()
            if missing is None:
                self.logs.append(TensorBoardLog(out / "tensorboard", start))
            else:
                print(f"csd_fast train: note: TensorBoard logging is off: {missing} "
                      "(`pip install tensorboard` to turn it on, tensorboard=false to silence "
                      "this); log.csv has the same scalars")

    @property
    def tensorboard(self) -> bool:
        return any(isinstance(log, TensorBoardLog) for log in self.logs)

    def write(self, row: dict) -> None:
        for log in self.logs:
            log.write(row)

    def close(self) -> None:
        for log in self.logs:
            log.close()
