"""The demo's steps, each through the package's public functions: train the three runs,
score them on the held-out photographs, time the exported slim student, write the report.

    Demo(settings).run():
        choose_photos()    the bundled photographs or --data's, split train / held out
        prepare_output()   --output, refusing an earlier demo's runs unless --overwrite
        make_data()        the photographs as PNG folders (temporary)
        train()            teacher, CSD student, student alone
        evaluate()         scores, CPU times, the figure's regions
        report()           the table, the figures, results.json and table.txt
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from .._atomic import atomic_write_bytes
from .figures import side_by_side
from .photos import bundled_photos, prepare, user_photos
from .report import FIGURE_COLUMNS, METHODS, figure_caption, table_lines, verdict
from .scoring import crops, score, time_per_image
from .settings import N_FEATS, N_RESBLOCKS, SCALE, STUDENT_WIDTH, ZOOM, DemoError, DemoSettings


def run_demo(settings: DemoSettings) -> dict:
    """Train, score and report (see `csd-fast demo --help`); returns what results.json holds."""
    return Demo(settings).run()


class Demo:
    """One `csd-fast demo` run: what each step produces is kept for the steps after it."""

    def __init__(self, settings: DemoSettings):
        self.settings = settings
        self.out = Path(settings.output)
        self.runs = self.out / "runs"

    def run(self) -> dict:
        self.start = time.perf_counter()
        self.choose_photos()
        self.prepare_output()
        with tempfile.TemporaryDirectory(prefix="csd_demo_data_") as tmp:
            self.make_data(Path(tmp))
            self.train()
            self.evaluate(Path(tmp))
        return self.report()

    def choose_photos(self) -> None:
        settings = self.settings
        if settings.data is not None:
            self.train_files, self.held_files = user_photos(Path(settings.data))
            self.source = str(settings.data)
        else:
            self.train_files, self.held_files = bundled_photos()
            self.source = "scikit-image's bundled photographs"

    def prepare_output(self) -> None:
        """The output folder, torch's threads, and what is about to run, said up front."""
        import torch

        from ..train.runlog import tensorboard_missing

        if self.runs.exists():
            if not self.settings.overwrite:
                raise DemoError(f"{self.runs} already exists; pass --overwrite to replace it or "
                                "choose another --output")
            shutil.rmtree(self.runs)
        self.out.mkdir(parents=True, exist_ok=True)
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        no_tensorboard = tensorboard_missing()
        self.tensorboard = no_tensorboard is None
        _say_what_runs(self.settings, self.source, self.train_files, self.held_files, no_tensorboard)

    def make_data(self, tmp: Path) -> None:
        self.train_dir, self.held_dir = tmp / "train", tmp / "heldout"
        prepare(self.train_files, self.train_dir, SCALE * self.settings.patch)
        self.held_names = prepare(self.held_files, self.held_dir, 2 * SCALE)

    def train(self) -> None:
        self.timings = train_runs(self.settings, self.train_dir, self.held_dir, self.runs,
                                  tensorboard=self.tensorboard)

    def evaluate(self, tmp: Path) -> None:
        """Each run's final network and the exported slim student, scored and timed."""
        from ..export import export_student

        t = time.perf_counter()
        models = {name: _final_model(self.runs / name) for name in ("teacher", "csd", "student_alone")}
        models["slim_student"] = export_student(models["csd"], STUDENT_WIDTH).eval()
        self.results = score(models, self.held_dir, tmp / "sr")
        self.speed = time_per_image(models, self.held_dir)
        self.rows = crops(self.held_dir, tmp / "sr")
        self.timings["eval_s"] = time.perf_counter() - t
        self.params = {"teacher": models["teacher"].num_parameters(1.0),
                       "student": models["csd"].num_parameters(STUDENT_WIDTH),
                       "slim_student": sum(p.numel() for p in models["slim_student"].parameters())}
        self.table = {"bicubic": self.results["teacher"]["bicubic"],
                      **{k: self.results[k]["model"] for k in (*dict(METHODS), "slim_student")}}

    def report(self) -> dict:
        """The table and verdict printed, the figures drawn, results.json and table.txt written."""
        lines = table_lines(self.table, self.params, self.speed)
        wall = time.perf_counter() - self.start
        print(f"\nheld-out images ({', '.join(self.held_names)}), x{SCALE}, Y channel, {SCALE}-pixel border cropped:")
        print("\n".join(lines))
        print(verdict(self.table))
        self.draw_figures()
        report = self.results_json(wall)
        atomic_write_bytes(self.out / "results.json", json.dumps(report, indent=1).encode())
        atomic_write_bytes(self.out / "table.txt", ("\n".join(lines) + "\n").encode())
        self.say_where(wall)
        return report

    def draw_figures(self) -> None:
        from ..train.curves import read_log, training_curves

        side = max(row["region"][2] for row in self.rows)
        side_by_side(self.rows, FIGURE_COLUMNS, self.out / "side_by_side.png", ZOOM, figure_caption(side))
        training_curves([("teacher", read_log(self.runs / "teacher")), ("csd", read_log(self.runs / "csd"))],
                        self.out / "training_curves.png", STUDENT_WIDTH,
                        psnr_title=f"held-out PSNR, Y channel (x{SCALE})",
                        student_alone=read_log(self.runs / "student_alone"))

    def results_json(self, wall: float) -> dict:
        settings = self.settings
        return {
            "scale": SCALE, "n_feats": N_FEATS, "n_resblocks": N_RESBLOCKS, "student_width": STUDENT_WIDTH,
            "data": self.source, "train_images": [p.name for p in self.train_files],
            "heldout_images": [p.name for p in self.held_files], "random_vgg": True,
            "settings": {k: getattr(settings, k) for k in ("iterations", "csd_iterations", "patch", "batch",
                                                           "lr", "neg_num", "lambda_c", "seed", "device")},
            "params": self.params, "results": self.table, "cpu_ms_per_image": self.speed,
            "per_image": {k: self.results[k]["images"] for k in self.results},
            "timings_s": {**{k: round(v, 2) for k, v in self.timings.items()}, "wall": round(wall, 2)},
            # the table scores each run's final weights; best.safetensors is the student picked by
            # held-out PSNR during training (the held-out images double as the validation set)
            "student_checkpoint": str(self.runs / "csd" / "best.safetensors"),
        }

    def say_where(self, wall: float) -> None:
        timings, out, runs = self.timings, self.out, self.runs
        print(f"\nwall time {wall:.1f} s (teacher {timings['teacher_s']:.1f} s, csd {timings['csd_s']:.1f} s, "
              f"student alone {timings['student_alone_s']:.1f} s, eval {timings['eval_s']:.1f} s)")
        print(f"wrote {out / 'side_by_side.png'}, {out / 'training_curves.png'}, {out / 'results.json'}, "
              f"runs in {runs}")
        print(f"try the student: csd-fast upscale IMAGE -o out/ --checkpoint {runs / 'csd' / 'best.safetensors'} "
              f"(it records width {STUDENT_WIDTH:g}, which upscale uses by default)")


def _say_what_runs(settings: DemoSettings, source: str, train_files, held_files, no_tensorboard) -> None:
    print(f"csd-fast demo: EDSR x{SCALE} (n_feats {N_FEATS}, {N_RESBLOCKS} blocks), student width "
          f"{STUDENT_WIDTH:g}, data: {source}")
    print(f"  training images: {', '.join(p.name for p in train_files)}")
    print(f"  held-out images: {', '.join(p.name for p in held_files)}")
    print("  NOTE: the contrastive loss uses a VGG19 with RANDOM weights (no download); real CSD "
          "training uses torchvision's pretrained VGG19 (vgg_weights=...).")
    if no_tensorboard is not None:  # said once here rather than by each training run
        print(f"  NOTE: TensorBoard logging is off: {no_tensorboard} (`pip install tensorboard` to "
              "turn it on); each run's log.csv has the same scalars.")
    if settings.lr > 1e-4:
        print(f"  NOTE: lr {settings.lr:g} is higher than the recipe's 1e-4 so that {settings.iterations} + "
              f"{settings.csd_iterations} iterations already beat bicubic; use `csd-fast train` for real training.")


def train_runs(settings: DemoSettings, train_dir: Path, held_dir: Path, runs: Path,
               tensorboard: bool) -> dict:
    """The teacher, its CSD run, and the student trained alone with L1 for as many iterations
    as the CSD student saw in all (teacher + csd stages), on the same data with the same seed."""
    from ..train import load_config, train

    common = dict(scale=SCALE, n_feats=N_FEATS, n_resblocks=N_RESBLOCKS, width=STUDENT_WIDTH,
                  train_data=str(train_dir), val_data=str(held_dir), lr_patch=settings.patch,
                  batch=settings.batch, lr=settings.lr, decay_gamma=0.2, device=settings.device,
                  seed=settings.seed, progress=not settings.quiet, tensorboard=tensorboard)

    def schedule(n: int) -> dict:
        # lr drops for the last quarter; 4 validations and ~25 log rows per stage for the curves
        return dict(iterations=n, decay_every=max(1, n * 3 // 4), val_every=max(1, n // 4),
                    log_every=max(1, n // 25), checkpoint_every=n)

    stages = {
        "teacher": dict(stage="teacher", **schedule(settings.iterations)),
        "csd": dict(stage="csd", random_vgg=True, neg_num=min(settings.neg_num, settings.batch),
                    lambda_c=settings.lambda_c, teacher_checkpoint=str(runs / "teacher" / "last.pt"),
                    **schedule(settings.csd_iterations)),
        "student_alone": dict(stage="student", **schedule(settings.iterations + settings.csd_iterations)),
    }
    timings = {}
    for name, stage in stages.items():
        t = time.perf_counter()
        train(load_config(out_dir=str(runs / name), **stage, **common))
        timings[f"{name}_s"] = time.perf_counter() - t
    return timings


def _final_model(run: Path):
    """The model as it ended the run (last.pt), not the best-by-validation one: the held-out
    images are the validation set, so picking by them would flatter the table."""
    from ..checkpoint import load_checkpoint

    return load_checkpoint(run / "last.pt").eval()
