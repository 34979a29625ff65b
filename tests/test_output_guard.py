"""No command writes over one of its inputs, or over an existing file without --overwrite
(csd_fast/_outputs.py). For each command every output is pointed at each of its inputs and at
an existing file: exit status 2, one error line naming the problem, and every file under the
test's folder byte for byte as it was. With --overwrite an existing output is replaced; an
input is still refused."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from csd_fast import EDSRCSD, save_checkpoint
from csd_fast._outputs import check_outputs
from csd_fast.cli import main

TINY_TRAIN = ["stage=teacher", "scale=2", "n_feats=8", "n_resblocks=1", "lr_patch=8", "batch=2",
              "iterations=1", "progress=false", "tensorboard=false", "val_data=null"]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root (links followed) -> sha256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def refused(capsys, args: list[str], root: Path, *wanted: str) -> str:
    """Run the command; it must fail with exit 2 and one error line holding each of wanted,
    leaving every file under root as it was (none changed, none added)."""
    before = snapshot(root)
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"csd-fast {args[0]}: error: "), err
    for text in wanted:
        assert text in lines[0], (text, lines[0])
    assert snapshot(root) == before
    return lines[0]


def png(path: Path, size=(24, 28), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def tiny_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(EDSRCSD(2, 1, 8, 1.0), path, default_width=0.5)


@pytest.fixture
def work(tmp_path, monkeypatch):
    """tmp_path as the working folder, holding a checkpoint and a set in the EDSR-PyTorch
    layout (HR and LR images both inputs)."""
    monkeypatch.chdir(tmp_path)
    tiny_checkpoint(tmp_path / "m.safetensors")
    for i in range(2):
        png(tmp_path / "set" / "HR" / f"img{i}.png", seed=i)
        png(tmp_path / "set" / "LR_bicubic" / "X2" / f"img{i}x2.png", size=(12, 14), seed=10 + i)
    return tmp_path


# --- the guard itself ---------------------------------------------------------------------------

def test_same_file_under_any_name_is_the_input(tmp_path):
    source = png(tmp_path / "in.png")
    os.link(source, tmp_path / "hard.png")
    (tmp_path / "soft.png").symlink_to(source)
    for name in ("in.png", "./in.png", "sub/../in.png", "hard.png", "soft.png"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        for overwrite in (False, True):
            with pytest.raises(ValueError, match="refusing to overwrite an input: -o .* is the image"):
                check_outputs([("-o", tmp_path / name)], [("the image", source)], overwrite=overwrite)


def test_two_outputs_of_one_name_and_files_in_the_way(tmp_path):
    with pytest.raises(ValueError, match="are the same file"):
        check_outputs([("--json", tmp_path / "r"), ("--csv", tmp_path / "." / "r")])
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder; give a file name"):
        check_outputs([("--json", tmp_path / "folder")])
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file is a file, not a folder"):
        check_outputs([("--json", tmp_path / "file" / "deeper" / "r.json")])
    check_outputs([("--json", tmp_path / "new" / "r.json"), ("--csv", None)])  # absent: fine


# --- eval ---------------------------------------------------------------------------------------

def eval_args(*extra):
    return ["eval", "--checkpoint", "m.safetensors", "--data", "set", "--device", "cpu", *extra]


INPUTS = {"the checkpoint": "m.safetensors", "an HR image": "set/HR/img0.png",
          "an LR image": "set/LR_bicubic/X2/img1x2.png"}


@pytest.mark.parametrize("flag", ["--json", "--csv"])
@pytest.mark.parametrize("what", sorted(INPUTS))
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_eval_report_pointed_at_an_input(work, capsys, flag, what, overwrite):
    other = "--csv" if flag == "--json" else "--json"
    refused(capsys, eval_args(flag, INPUTS[what], other, "", *overwrite), work,
            f"refusing to overwrite an input: {flag} {INPUTS[what]} is the", "never replaced")


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_eval_images_pointed_at_inputs(work, capsys, overwrite):
    # <folder>/set/img0.png is the HR image itself through a link, or the checkpoint by name
    (work / "alias").mkdir()
    (work / "alias" / "set").symlink_to(work / "set" / "HR")
    refused(capsys, eval_args("--save-images", "alias", "--json", "", "--csv", "", *overwrite), work,
            "--save-images alias/set/img0.png is the input image")
    tiny_checkpoint(work / "ck" / "set" / "img0.png")
    args = ["eval", "--checkpoint", "ck/set/img0.png", "--data", "set", "--device", "cpu",
            "--save-images", "ck", "--json", "", "--csv", "", *overwrite]
    refused(capsys, args, work, "--save-images ck/set/img0.png is the checkpoint")


@pytest.mark.parametrize("flag, name", [("--json", "old.json"), ("--csv", "old.csv"),
                                        ("--save-images", "sr/set/img1.png")])
def test_eval_existing_output_needs_overwrite(work, capsys, flag, name):
    args = {"--json": "r.json", "--csv": "r.csv", "--save-images": None}
    old = work / name
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_bytes(b"an earlier result")
    args[flag] = "sr" if flag == "--save-images" else name
    argv = eval_args(*[x for k, v in args.items() if v for x in (k, v)])
    refused(capsys, argv, work, f"{flag} {name} already exists; pass --overwrite")
    assert main(argv + ["--overwrite"]) == 0
    assert old.read_bytes() != b"an earlier result" and old.stat().st_size > 0


def test_eval_default_report_names_are_guarded_too(work, capsys):
    (work / "eval_results.json").write_text("{}")
    refused(capsys, eval_args(), work, "--json eval_results.json already exists")
    assert main(eval_args("--overwrite")) == 0
    assert (work / "eval_results.csv").is_file() and (work / "eval_results.json").stat().st_size > 2


def test_eval_refuses_before_loading_the_checkpoint(work, capsys, monkeypatch):
    import csd_fast.checkpoint
    monkeypatch.setattr(csd_fast.checkpoint, "load_checkpoint", lambda *a, **k: pytest.fail("loaded"))
    refused(capsys, eval_args("--json", "m.safetensors"), work, "is the checkpoint")
    refused(capsys, eval_args("--scale", "2", "--csv", "set/HR/img1.png"), work, "is the input image")


# --- upscale ------------------------------------------------------------------------------------

def upscale_args(*extra):
    return ["upscale", "photos", "--checkpoint", "m.safetensors", "--device", "cpu", *extra]


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_upscale_output_pointed_at_inputs(work, capsys, overwrite):
    png(work / "photos" / "a.png")
    refused(capsys, upscale_args("-o", "photos", *overwrite), work, "-o photos/a.png is the input image")
    tiny_checkpoint(work / "ck" / "a.png")  # a checkpoint that happens to bear an output's name
    argv = ["upscale", "photos", "--checkpoint", "ck/a.png", "--device", "cpu", "-o", "ck", *overwrite]
    refused(capsys, argv, work, "-o ck/a.png is the checkpoint")


def test_upscale_existing_output_needs_overwrite(work, capsys):
    png(work / "photos" / "a.png")
    png(work / "out" / "a.png", size=(3, 3))
    refused(capsys, upscale_args("-o", "out"), work, "-o out/a.png already exists; pass --overwrite")
    assert main(upscale_args("-o", "out", "--overwrite")) == 0
    with Image.open(work / "out" / "a.png") as im:
        assert im.size == (56, 48)


# --- export -------------------------------------------------------------------------------------

@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_export_output_pointed_at_the_checkpoint(work, capsys, overwrite):
    os.link(work / "m.safetensors", work / "same.safetensors")
    for name in ("m.safetensors", "./m.safetensors", "same.safetensors"):
        refused(capsys, ["export", "m.safetensors", "-o", name, *overwrite], work,
                f"output {Path(name)} is the input checkpoint")


def test_export_existing_output_needs_overwrite(work, capsys):
    (work / "s.pt").write_bytes(b"keep me")
    refused(capsys, ["export", "m.safetensors", "--format", "edsr_pytorch", "-o", "s.pt"], work,
            "output s.pt already exists; pass overwrite=True (--overwrite)")
    assert main(["export", "m.safetensors", "--format", "edsr_pytorch", "-o", "s.pt", "--overwrite"]) == 0
    assert (work / "s.pt").read_bytes() != b"keep me"


# --- train --------------------------------------------------------------------------------------

def train_args(out: str, *extra):
    return ["train", "train_data=set", f"out_dir={out}", *TINY_TRAIN, *extra]


def test_train_refuses_another_runs_files(work, capsys):
    (work / "old").mkdir()
    (work / "old" / "best.pt").write_bytes(b"an older run's best")
    (work / "old" / "log.csv").write_text("iteration\n")
    refused(capsys, train_args("old"), work, "out_dir old already holds log.csv, best.pt")
    refused(capsys, train_args("old", "--resume"), work, "already holds")  # nothing to resume
    (work / "old" / "last.pt").write_bytes(b"a run")
    refused(capsys, train_args("old"), work, "already holds a run", "--resume")


def test_train_outputs_pointed_at_inputs(work, capsys):
    # out_dir is the training folder, one of whose images is called curves.png
    png(work / "photos" / "curves.png", size=(32, 32))
    png(work / "photos" / "b.png", size=(32, 32))
    refused(capsys, ["train", "train_data=photos", "out_dir=photos", *TINY_TRAIN], work, "curves.png")
    # the --config file is the config.yaml a new run would write
    (work / "run").mkdir()
    (work / "run" / "config.yaml").write_text(yaml.safe_dump({"train_data": "set", "out_dir": "run"}))
    refused(capsys, ["train", "--config", "run/config.yaml", *TINY_TRAIN], work, "config.yaml")


def test_train_resume_keeps_its_folder_but_never_an_input(work, capsys):
    assert main(train_args("teacher")) == 0
    csd = ["stage=csd", "teacher_checkpoint=teacher/last.pt", "lambda_c=0", "neg_num=2"]
    assert main(train_args("run", *csd, "val_data=set", "val_every=1")) == 0
    capsys.readouterr()
    # a resume rewrites its own files, but not one it reads
    refused(capsys, train_args("run", *csd, "iterations=2", "teacher_checkpoint=run/best.pt", "--resume"),
            work, "out_dir file run/best.pt is teacher_checkpoint")
    refused(capsys, train_args("run", *csd, "iterations=2", "vgg_weights=run/last.pt", "--resume"), work,
            "out_dir file run/last.pt is vgg_weights")
    # the usual resume: the run's own config.yaml given back, with more iterations
    assert main(["train", "--config", "run/config.yaml", "iterations=2", "--resume"]) == 0
    assert torch.load(work / "run" / "last.pt", weights_only=True)["iteration"] == 2


# --- demo ---------------------------------------------------------------------------------------

DEMO_TINY = ["--iterations", "1", "--csd-iterations", "1", "--patch", "8", "--batch", "2",
             "--neg-num", "2", "--quiet", "--device", "cpu"]


def demo_images(folder: Path) -> Path:
    for i in range(2):
        png(folder / f"img{i}.png", size=(40, 40 + 2 * i), seed=i)
    return folder


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_demo_output_pointed_at_inputs(work, capsys, overwrite):
    data = demo_images(work / "photos")
    png(data / "side_by_side.png", size=(40, 40))  # one of the user's photos bears a report's name
    refused(capsys, ["demo", "--data", "photos", "--output", "photos", *DEMO_TINY, *overwrite], work,
            "--output photos/side_by_side.png is the input image")
    (work / "out" / "runs").mkdir(parents=True)
    demo_images(work / "out" / "runs" / "mine")
    refused(capsys, ["demo", "--data", "out/runs/mine", "--output", "out", *DEMO_TINY, *overwrite], work,
            "lies inside out/runs")


def test_demo_existing_output_needs_overwrite(work, capsys):
    demo_images(work / "photos")
    (work / "out").mkdir()
    (work / "out" / "results.json").write_text("an earlier demo's")
    refused(capsys, ["demo", "--data", "photos", "--output", "out", *DEMO_TINY], work,
            "--output out/results.json already exists; pass --overwrite")
    assert main(["demo", "--data", "photos", "--output", "out", *DEMO_TINY, "--overwrite"]) == 0
    assert (work / "out" / "results.json").read_text().startswith("{")
