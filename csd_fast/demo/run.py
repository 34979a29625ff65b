"""The demo's steps, each through the package's public functions: train the three runs,
score them on the held-out photographs, time the exported slim student, write the report."""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from .figures import side_by_side
from .photos import bundled_photos, prepare, user_photos
from .settings import CROP, N_FEATS, N_RESBLOCKS, SCALE, STUDENT_WIDTH, DemoError, DemoSettings

# (key, label in the table); the CSD run's weights score twice, at the student's width and at 1
METHODS = (("student_alone", f"student alone (L1, width {STUDENT_WIDTH:g})"),
           ("student", f"student (CSD, width {STUDENT_WIDTH:g})"),
           ("teacher", "teacher (width 1)"),
           ("csd_teacher", "CSD model at width 1"))


def run_demo(settings: DemoSettings) -> dict:
    """Train, score and report (see `csd-fast demo --help`); returns what results.json holds."""
    import torch

    from ..train.runlog import tensorboard_missing

    start = time.perf_counter()
    if settings.data is not None:
        train_files, held_files = user_photos(Path(settings.data))
        source = str(settings.data)
    else:
        train_files, held_files = bundled_photos()
        source = "scikit-image's bundled photographs"
    out = Path(settings.output)
    runs = out / "runs"
    if runs.exists():
        if not settings.overwrite:
            raise DemoError(f"{runs} already exists; pass --overwrite to replace it or choose another --output")
        shutil.rmtree(runs)
    out.mkdir(parents=True, exist_ok=True)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    no_tensorboard = tensorboard_missing()
    _say_what_runs(settings, source, train_files, held_files, no_tensorboard)

    with tempfile.TemporaryDirectory(prefix="csd_demo_data_") as tmp:
        train_dir, held_dir = Path(tmp) / "train", Path(tmp) / "heldout"
        prepare(train_files, train_dir, SCALE * settings.patch)
        held_names = prepare(held_files, held_dir, 2 * SCALE)
        timings = train_runs(settings, train_dir, held_dir, runs, tensorboard=no_tensorboard is None)
        t = time.perf_counter()
        models = {name: _final_model(runs / name) for name in ("teacher", "csd", "student_alone")}
        from ..export import export_student
        models["slim_student"] = export_student(models["csd"], STUDENT_WIDTH).eval()
        sr_dir = Path(tmp) / "sr"
        results = score(models, held_dir, sr_dir)
        speed = time_per_image(models, held_dir)
        rows = crops(held_dir, sr_dir)
        timings["eval_s"] = time.perf_counter() - t

    params = {"teacher": models["teacher"].num_parameters(1.0),
              "student": models["csd"].num_parameters(STUDENT_WIDTH),
              "slim_student": sum(p.numel() for p in models["slim_student"].parameters())}
    table = {"bicubic": results["teacher"]["bicubic"],
             **{k: results[k]["model"] for k in (*dict(METHODS), "slim_student")}}
    lines = table_lines(table, params, speed)
    wall = time.perf_counter() - start
    print(f"\nheld-out images ({', '.join(held_names)}), x{SCALE}, Y channel, {SCALE}-pixel border cropped:")
    print("\n".join(lines))
    print(_verdict(table))

    side_by_side(rows, ["bicubic", "alone", "CSD", "teacher", "HR"], out / "side_by_side.png", CROP)
    from ..train.curves import read_log, training_curves
    training_curves([("teacher", read_log(runs / "teacher")), ("csd", read_log(runs / "csd"))],
                    out / "training_curves.png", STUDENT_WIDTH,
                    psnr_title=f"held-out PSNR, Y channel (x{SCALE})")
    report = {
        "scale": SCALE, "n_feats": N_FEATS, "n_resblocks": N_RESBLOCKS, "student_width": STUDENT_WIDTH,
        "data": source, "train_images": [p.name for p in train_files],
        "heldout_images": [p.name for p in held_files], "random_vgg": True,
        "settings": {k: getattr(settings, k) for k in ("iterations", "csd_iterations", "patch", "batch",
                                                       "lr", "neg_num", "lambda_c", "seed", "device")},
        "params": params, "results": table, "cpu_ms_per_image": speed,
        "per_image": {k: results[k]["images"] for k in results},
        "timings_s": {**{k: round(v, 2) for k, v in timings.items()}, "wall": round(wall, 2)},
        # the table scores each run's final weights; best.safetensors is the student picked by
        # held-out PSNR during training (the held-out images double as the validation set)
        "student_checkpoint": str(runs / "csd" / "best.safetensors"),
    }
    (out / "results.json").write_text(json.dumps(report, indent=1))
    (out / "table.txt").write_text("\n".join(lines) + "\n")
    print(f"\nwall time {wall:.1f} s (teacher {timings['teacher_s']:.1f} s, csd {timings['csd_s']:.1f} s, "
          f"student alone {timings['student_alone_s']:.1f} s, eval {timings['eval_s']:.1f} s)")
    print(f"wrote {out / 'side_by_side.png'}, {out / 'training_curves.png'}, {out / 'results.json'}, "
          f"runs in {runs}")
    print(f"try the student: csd-fast upscale IMAGE -o out/ --checkpoint {runs / 'csd' / 'best.safetensors'} "
          f"(it records width {STUDENT_WIDTH:g}, which upscale uses by default)")
    return report


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


def score(models: dict, held_dir: Path, sr_dir: Path) -> dict:
    """PSNR/SSIM on the held-out images per method, the SR images saved under sr_dir/<method>."""
    from ..evaluation import evaluate

    runs = {"student_alone": (models["student_alone"], STUDENT_WIDTH),
            "student": (models["csd"], STUDENT_WIDTH), "teacher": (models["teacher"], 1.0),
            "csd_teacher": (models["csd"], 1.0), "slim_student": (models["slim_student"], 1.0)}
    results = {}
    for key, (model, width) in runs.items():
        res = evaluate(model, [held_dir], SCALE, width=width, save_images=sr_dir / key, progress=False)
        results[key] = next(iter(res.values()))
    return results


def time_per_image(models: dict, held_dir: Path, repeats: int = 3) -> dict:
    """CPU milliseconds per held-out image of the full network (width 1) and of the exported
    slim student, best of `repeats` passes over the images."""
    import torch

    from ..data import SRFolder

    full, slim = models["csd"], models["slim_student"]
    images = [full.to_model_range(lr.float().unsqueeze(0)) for _, lr, _ in SRFolder(held_dir, SCALE)]
    runners = {"teacher": lambda x: full(x, 1.0), "slim_student": lambda x: slim(x, 1.0)}
    ms = {}
    with torch.inference_mode():
        for name, forward in runners.items():
            best = float("inf")
            for _ in range(repeats + 1):  # the first pass warms up
                t = time.perf_counter()
                for x in images:
                    forward(x)
                best = min(best, time.perf_counter() - t)
            ms[name] = 1e3 * best / len(images)
    return ms


def crops(held_dir: Path, sr_dir: Path) -> list[dict]:
    """The centre CROP x CROP of each held-out image for every method, with its PSNR."""
    from ..data import SRFolder, imresize, read_image
    from ..evaluation import to_uint8
    from ..metrics import psnr

    rows = []
    for name, lr, hr in SRFolder(held_dir, SCALE):
        ims = [to_uint8(imresize(lr, SCALE))]
        ims += [read_image(sr_dir / key / "heldout" / f"{name}.png")
                for key in ("student_alone", "student", "teacher")]
        ims.append(hr)
        side = min(CROP, *hr.shape[1:])  # small user images: the whole image
        y, x = (hr.shape[1] - side) // 2, (hr.shape[2] - side) // 2
        pieces = [im[:, y:y + side, x:x + side].contiguous() for im in ims]
        scores = [psnr(c, pieces[-1], crop=SCALE) for c in pieces[:-1]] + [None]
        rows.append({"image": name, "crops": pieces, "psnr": scores})
    return rows


def table_lines(table: dict, params: dict, ms: dict) -> list[str]:
    slim_label = f"exported slim student (w {STUDENT_WIDTH:g})"
    rows = [("bicubic", "bicubic", None)] + [(key, label, params["teacher" if key in ("teacher", "csd_teacher")
                                                                     else "student"]) for key, label in METHODS]
    rows.append(("slim_student", slim_label, params["slim_student"]))
    lines = [f"{'method':<32} {'params':>8} {'PSNR':>7} {'SSIM':>7} {'CPU ms/img':>11}"]
    for key, label, n in rows:
        m = table[key]
        count = "-" if n is None else f"{n / 1e3:.1f}k"
        t = f"{ms[key]:.1f}" if key in ms else "-"
        lines.append(f"{label:<32} {count:>8} {m['psnr']:>7.2f} {m['ssim']:>7.4f} {t:>11}")
    return lines


def _verdict(table: dict) -> str:
    """What the CSD-vs-alone comparison shows in this run, said plainly either way."""
    gain = table["student"]["psnr"] - table["student_alone"]["psnr"]
    if gain > 0:
        return (f"CSD student vs student alone: {gain:+.2f} dB in this run. With a random VGG19 and a "
                "short schedule this is not evidence about CSD's contrastive term.")
    return (f"CSD student vs student alone: {gain:+.2f} dB: here CSD did not beat training the student "
            "alone. With a random VGG19 the contrastive term carries little signal, and the schedule "
            "is short; the paper's gains need its pretrained VGG19 and full recipe.")
