"""The demo's fixed model and its adjustable settings (the `csd-fast demo` flags)."""
from __future__ import annotations

import dataclasses

SCALE = 2
N_FEATS, N_RESBLOCKS = 32, 4
STUDENT_WIDTH = 0.5
MAX_SIDE = 768  # larger photographs are centre-cropped: the bicubic LR is made faster, pixels untouched
CROP = 64       # HR side of the region each photo shows in the side-by-side figure...
ZOOM = 3        # ...enlarged this many times
# what the demo writes into its output folder besides runs/ (which it refuses to mix with an
# earlier demo's unless --overwrite, and then removes whole)
REPORT_FILES = ("results.json", "table.txt", "side_by_side.png", "training_curves.png")


class DemoError(ValueError):
    """A problem the user can fix (exit status 2)."""


def setting(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class DemoSettings:
    """Sized so that the whole demo takes minutes on a CPU; each field is a `csd-fast demo` flag."""
    data: str | None = setting(None, "your own folder of HR images instead of the bundled photographs "
                                     "(first 80%% by name train, the rest are held out)")
    output: str = setting("csd_demo", "where results go (default csd_demo/)")
    overwrite: bool = setting(False, "replace the runs of an earlier demo in --output")
    iterations: int = setting(1000, "teacher-stage iterations (default 1000)")
    csd_iterations: int = setting(400, "csd-stage iterations (default 400; each costs ~8 teacher "
                                        "iterations: VGG19 forwards)")
    patch: int = setting(32, "LR patch size (default 32)")
    batch: int = setting(8, "batch size (default 8)")
    lr: float = setting(5e-4, "learning rate (default 5e-4)")
    neg_num: int = setting(4, "CSD negatives per anchor, <= batch (default 4)")
    lambda_c: float = setting(200.0, "weight of the contrastive loss (default 200)")
    device: str = setting("auto", "auto, cpu or cuda (default auto)")
    threads: int = setting(0, "torch CPU threads (default: torch's choice)")
    seed: int = setting(0, "seed of every run (default 0)")
    quiet: bool = setting(False, "no progress bars")
