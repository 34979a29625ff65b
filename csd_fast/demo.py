"""`csd-fast demo`: train a small CSD model end to end on bundled photographs and show the result.

No data and no downloaded weights are needed: the photographs come from scikit-image's
wheel (or --data DIR), the VGG19 of the contrastive loss has random weights, and every
setting is sized so that the whole run takes a few minutes on a laptop CPU.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

SCALE = 2
N_FEATS, N_RESBLOCKS = 32, 4
STUDENT_WIDTH = 0.5
# RGB photographs shipped inside scikit-image's wheel (skimage/data); the held-out ones are
# fixed by name so every run scores the same images. motorcycle_left/right are one scene
# seen twice, so both stay on the training side.
TRAIN_PHOTOS = ("rocket.jpg", "motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg",
                "ihc.png", "retina.jpg", "color.png")
HELDOUT_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png")
MAX_SIDE = 768  # larger photographs are centre-cropped: the bicubic LR is made faster, pixels untouched
CROP = 96       # HR side of each crop in the side-by-side figure


class DemoError(RuntimeError):
    """A problem the user can fix; printed as one line, exit code 2."""


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
    from .data import IMAGE_SUFFIXES
    if not folder.is_dir():
        raise DemoError(f"--data {folder}: no such folder")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if len(files) < 2:
        raise DemoError(f"--data {folder}: found {len(files)} image(s) ({', '.join(IMAGE_SUFFIXES)}); "
                        "the demo needs at least 2, one to train on and one to hold out")
    n_train = min(max(1, int(len(files) * 0.8)), len(files) - 1)
    return files[:n_train], files[n_train:]


def prepare(files: list[Path], folder: Path, min_side: int) -> list[str]:
    """Copy files into folder as PNGs whose sides are multiples of the scale (an hr_folder layout:
    the readers make the LR with MATLAB's bicubic)."""
    from .data import read_image, write_png

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


def _load_final(run: Path):
    """The model as it ended the run (last.pt), not the best-by-validation one: the held-out
    images are the validation set, so picking by them would flatter the table."""
    from .train.state import load_state
    from .train.trainer import build_model
    from .train.config import TrainConfig

    state = load_state(run / "last.pt", map_location="cpu")
    model = build_model(TrainConfig(**{**state["config"], "betas": tuple(state["config"]["betas"])}))
    model.load_state_dict(state["model"])
    return model.eval()


# --- figures (PIL only) -------------------------------------------------------------------

def _label(img, text: str):
    from PIL import ImageDraw
    draw = ImageDraw.Draw(img)
    box = draw.textbbox((3, 2), text)
    draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
    draw.text((3, 2), text, fill=(255, 255, 255))
    return img


def side_by_side(rows: list[dict], path: Path, zoom: int = 2) -> None:
    """One row per held-out image: crops of bicubic | student | teacher | HR, each zoomed."""
    from PIL import Image

    tiles = [[Image.fromarray(t.permute(1, 2, 0).numpy()) for t in r["crops"]] for r in rows]
    side = CROP * zoom
    sheet = Image.new("RGB", (4 * side + 5 * 4, len(rows) * (side + 4) + 4), (255, 255, 255))
    for i, (row, ims) in enumerate(zip(rows, tiles)):
        for j, (im, name) in enumerate(zip(ims, ("bicubic", f"student x{STUDENT_WIDTH:g}", "teacher", "HR"))):
            im = im.resize((side, side), Image.NEAREST)  # nearest: show the pixels as they are
            psnr = row["psnr"][j]
            _label(im, f"{row['image']} {name}" + (f" {psnr:.2f}dB" if psnr is not None else ""))
            sheet.paste(im, (4 + j * (side + 4), 4 + i * (side + 4)))
    sheet.save(path)


# --- the command ---------------------------------------------------------------------------

def run_demo(args: argparse.Namespace) -> dict:
    import torch
    from . import evaluate
    from .data import SRFolder, imresize
    from .evaluation import to_uint8
    from .metrics import psnr
    from .train.config import load_config
    from .train.curves import read_log, training_curves
    from .train.runlog import tensorboard_missing
    from .train.trainer import train

    start = time.perf_counter()
    if args.data is not None:
        train_files, held_files = user_photos(Path(args.data))
        source = str(args.data)
    else:
        train_files, held_files = bundled_photos()
        source = "scikit-image's bundled photographs"
    out = Path(args.output)
    runs = out / "runs"
    if runs.exists():
        if not args.overwrite:
            raise DemoError(f"{runs} already exists; pass --overwrite to replace it or choose another --output")
        shutil.rmtree(runs)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"csd-fast demo: EDSR x{SCALE} (n_feats {N_FEATS}, {N_RESBLOCKS} blocks), student width "
          f"{STUDENT_WIDTH:g}, data: {source}")
    print(f"  training images: {', '.join(p.name for p in train_files)}")
    print(f"  held-out images: {', '.join(p.name for p in held_files)}")
    print("  NOTE: the contrastive loss uses a VGG19 with RANDOM weights (no download); real CSD "
          "training uses torchvision's pretrained VGG19 (vgg_weights=...).")
    # said once here rather than by each of the two training runs
    no_tensorboard = tensorboard_missing()
    if no_tensorboard is not None:
        print(f"  NOTE: TensorBoard logging is off: {no_tensorboard} (`pip install tensorboard` to "
              "turn it on); each run's log.csv has the same scalars.")
    if args.lr > 1e-4:
        print(f"  NOTE: lr {args.lr:g} is higher than the recipe's 1e-4 so that {args.iterations} + "
              f"{args.csd_iterations} iterations already beat bicubic; use `csd-fast train` for real training.")

    with tempfile.TemporaryDirectory(prefix="csd_demo_data_") as tmp:
        train_dir, held_dir = Path(tmp) / "train", Path(tmp) / "heldout"
        prepare(train_files, train_dir, SCALE * args.patch)
        held_names = prepare(held_files, held_dir, 2 * SCALE)

        common = dict(scale=SCALE, n_feats=N_FEATS, n_resblocks=N_RESBLOCKS, width=STUDENT_WIDTH,
                      train_data=str(train_dir), val_data=str(held_dir), lr_patch=args.patch,
                      batch=args.batch, lr=args.lr, decay_gamma=0.2, device=args.device,
                      seed=args.seed, progress=not args.quiet, tensorboard=no_tensorboard is None)

        def schedule(n: int) -> dict:
            # lr drops for the last quarter; 4 validations and ~25 log rows per stage for the curves
            return dict(iterations=n, decay_every=max(1, n * 3 // 4), val_every=max(1, n // 4),
                        log_every=max(1, n // 25), checkpoint_every=n)

        timings = {}
        t = time.perf_counter()
        train(load_config(stage="teacher", out_dir=str(runs / "teacher"), **schedule(args.iterations), **common))
        timings["teacher_s"] = time.perf_counter() - t
        t = time.perf_counter()
        train(load_config(stage="csd", out_dir=str(runs / "csd"), random_vgg=True,
                          neg_num=min(args.neg_num, args.batch), lambda_c=args.lambda_c,
                          teacher_checkpoint=str(runs / "teacher" / "last.pt"),
                          **schedule(args.csd_iterations), **common))
        timings["csd_s"] = time.perf_counter() - t

        # evaluate the final weights of each stage on the held-out images
        t = time.perf_counter()
        teacher, csd = _load_final(runs / "teacher"), _load_final(runs / "csd")
        sr_dir = Path(tmp) / "sr"
        methods = {"teacher": (teacher, 1.0), "student": (csd, STUDENT_WIDTH), "csd_teacher": (csd, 1.0)}
        results = {}
        for key, (model, width) in methods.items():
            res = evaluate(model, [held_dir], SCALE, width=width, save_images=sr_dir / key, progress=False)
            results[key] = next(iter(res.values()))
        timings["eval_s"] = time.perf_counter() - t

        # side-by-side crops: the centre CROP x CROP of each held-out HR image
        from .data import read_image
        rows = []
        for name, lr, hr in SRFolder(held_dir, SCALE):
            bic = to_uint8(imresize(lr, SCALE))
            ims = [bic, read_image(sr_dir / "student" / "heldout" / f"{name}.png"),
                   read_image(sr_dir / "teacher" / "heldout" / f"{name}.png"), hr]
            side = min(CROP, *hr.shape[1:])  # small user images: the whole image
            y, x = (hr.shape[1] - side) // 2, (hr.shape[2] - side) // 2
            crops = [im[:, y:y + side, x:x + side].contiguous() for im in ims]
            scores = [psnr(c, crops[3], crop=SCALE) for c in crops[:3]] + [None]
            rows.append({"image": name, "crops": crops, "psnr": scores})

    bicubic = results["teacher"]["bicubic"]
    table = {"bicubic": bicubic, **{k: results[k]["model"] for k in methods}}
    params = {"teacher": teacher.num_parameters(1.0), "student": csd.num_parameters(STUDENT_WIDTH)}
    lines = [f"{'method':<28} {'params':>8} {'PSNR':>7} {'SSIM':>7}",
             f"{'bicubic':<28} {'-':>8} {bicubic['psnr']:>7.2f} {bicubic['ssim']:>7.4f}"]
    labels = {"teacher": "teacher (width 1)", "student": f"student (CSD, width {STUDENT_WIDTH:g})",
              "csd_teacher": "CSD model at width 1"}
    for key, label in labels.items():
        m = table[key]
        n = params["student" if key == "student" else "teacher"]
        lines.append(f"{label:<28} {n / 1e3:>7.1f}k {m['psnr']:>7.2f} {m['ssim']:>7.4f}")
    wall = time.perf_counter() - start
    print(f"\nheld-out images ({', '.join(held_names)}), x{SCALE}, Y channel, {SCALE}-pixel border cropped:")
    print("\n".join(lines))

    side_by_side(rows, out / "side_by_side.png")
    training_curves([("teacher", read_log(runs / "teacher")), ("csd", read_log(runs / "csd"))],
                    out / "training_curves.png", STUDENT_WIDTH,
                    psnr_title=f"held-out PSNR, Y channel (x{SCALE})")
    report = {
        "scale": SCALE, "n_feats": N_FEATS, "n_resblocks": N_RESBLOCKS, "student_width": STUDENT_WIDTH,
        "data": source, "train_images": [p.name for p in train_files],
        "heldout_images": [p.name for p in held_files], "random_vgg": True,
        "settings": {k: getattr(args, k) for k in ("iterations", "csd_iterations", "patch", "batch", "lr", "neg_num",
                                                   "lambda_c", "seed", "device")},
        "params": params, "results": table,
        "per_image": {k: results[k]["images"] for k in methods},
        "timings_s": {**{k: round(v, 2) for k, v in timings.items()}, "wall": round(wall, 2)},
        # the table scores each stage's final weights; best.safetensors is the student picked by
        # held-out PSNR during training (the held-out images double as the validation set)
        "student_checkpoint": str(runs / "csd" / "best.safetensors"),
    }
    (out / "results.json").write_text(json.dumps(report, indent=1))
    (out / "table.txt").write_text("\n".join(lines) + "\n")
    print(f"\nwall time {wall:.1f} s (teacher {timings['teacher_s']:.1f} s, csd {timings['csd_s']:.1f} s, "
          f"eval {timings['eval_s']:.1f} s)")
    print(f"wrote {out / 'side_by_side.png'}, {out / 'training_curves.png'}, {out / 'results.json'}, "
          f"runs in {runs}")
    print(f"try the student: csd-fast upscale IMAGE -o out/ --checkpoint {runs / 'csd' / 'best.safetensors'} "
          f"(it records width {STUDENT_WIDTH:g}, which upscale uses by default)")
    return report


def cmd_demo(args: argparse.Namespace) -> int:
    from .data import DatasetError, ImageReadError
    from .train.config import ConfigError

    try:
        run_demo(args)
    except (DemoError, ConfigError, DatasetError, ImageReadError) as err:
        print(f"csd-fast demo: error: {err}", file=sys.stderr)
        return 2
    return 0


def add_demo_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo", help="train a small CSD model on bundled photographs and compare it with bicubic",
        description="Trains a small EDSR x2 teacher, then a width-0.5 student with CSD, on "
                    "photographs bundled with scikit-image (or --data DIR), and reports held-out "
                    "PSNR/SSIM beside bicubic. Takes a few minutes on a CPU.")
    p.add_argument("--data", metavar="DIR", help="your own folder of HR images instead of the bundled "
                   "photographs (first 80%% by name train, the rest are held out)")
    p.add_argument("--output", default="csd_demo", metavar="DIR", help="where results go (default csd_demo/)")
    p.add_argument("--overwrite", action="store_true", help="replace the runs of an earlier demo in --output")
    p.add_argument("--iterations", type=int, default=1000, help="teacher-stage iterations (default 1000)")
    p.add_argument("--csd-iterations", type=int, default=400,
                   help="csd-stage iterations (default 400; each costs ~8 teacher iterations: VGG19 forwards)")
    p.add_argument("--patch", type=int, default=32, help="LR patch size (default 32)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--lr", type=float, default=5e-4, help="learning rate (default 5e-4)")
    p.add_argument("--neg-num", type=int, default=4, help="CSD negatives per anchor, <= batch (default 4)")
    p.add_argument("--lambda-c", type=float, default=200.0, help="weight of the contrastive loss (default 200)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    return p
