"""The command line's contract: exit status (0 ok, 1 the run failed, 2 usage or input error),
one-line errors that name the problem, and the checkpoint's width as the default."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from csd_fast import EDSRCSD, cli, save_checkpoint
from csd_fast.cli import main
from csd_fast.train.config import FIELDS


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (24, 28, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def student_checkpoint(path, default_width=0.5):
    torch.manual_seed(0)
    return save_checkpoint(EDSRCSD(2, 1, 8, 1.0), path, default_width=default_width)


# --- exit status --------------------------------------------------------------------------

def test_the_convention_is_documented():
    doc = cli.__doc__
    assert "0 on success" in doc and "1 when the run itself failed" in doc and "2 for a usage" in doc


def test_bad_flag_is_2():
    with pytest.raises(SystemExit) as info:
        main(["upscale", "a.png", "-o", "out", "--checkpoint", "m.safetensors", "--bogus"])
    assert info.value.code == 2


@pytest.mark.parametrize("raised, code", [
    (ValueError("bad value"), 2), (FileNotFoundError("no file"), 2), (FileExistsError("exists"), 2),
    (PermissionError("denied"), 2), (RuntimeError("non-finite loss"), 1), (OSError("disk full"), 1),
])
def test_errors_map_to_the_convention(monkeypatch, capsys, raised, code):
    def command(args):
        raise raised

    monkeypatch.setattr(cli.command_module("info"), "run", command)  # main looks run up per call
    assert main(["info"]) == code
    assert capsys.readouterr().err == f"csd-fast info: error: {raised}\n"


# --- messages -------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"hello world\n", b"# csd_fast\n\nA README.\n"])
def test_text_file_as_checkpoint(tmp_path, images, capsys, monkeypatch, content):
    monkeypatch.chdir(tmp_path)  # eval's default report names are relative
    text = tmp_path / "some.txt"
    text.write_bytes(content)
    assert main(["upscale", str(images), "-o", str(tmp_path / "out"), "--checkpoint", str(text),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"csd-fast upscale: error: not a checkpoint: {text} is neither")
    assert "KeyError" not in err and "Unpickling" not in err
    assert main(["eval", "--checkpoint", str(text), "--data", str(images), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith(f"csd-fast eval: error: not a checkpoint: {text}")
    assert not (tmp_path / "out").exists()


def test_eval_reports_a_truncated_image_before_any_progress_bar(tmp_path, images, capsys):
    whole = (images / "im1.png").read_bytes()
    (images / "im1.png").write_bytes(whole[:len(whole) // 2])  # its header still reads
    ckpt = student_checkpoint(tmp_path / "m.safetensors")
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(images), "--device", "cpu",
                 "--json", str(tmp_path / "r.json"), "--csv", ""]) == 2
    err = capsys.readouterr().err
    assert "im1.png" in err and "truncated" in err
    assert "%|" not in err
    assert not (tmp_path / "r.json").exists()


# --- the checkpoint's width -----------------------------------------------------------------

def eval_width(tmp_path, images, ckpt, *extra):
    report = tmp_path / "r.json"
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(images), "--device", "cpu",
                 "--json", str(report), "--csv", "", "--overwrite", *extra]) == 0
    return json.loads(report.read_text())["meta"]["width"]


def test_eval_defaults_to_the_checkpoints_width(tmp_path, images, capsys):
    ckpt = student_checkpoint(tmp_path / "student.safetensors", 0.5)
    assert eval_width(tmp_path, images, ckpt) == 0.5
    out = capsys.readouterr().out
    assert "width 0.5 (from the checkpoint; --width overrides)" in out and "width 0.5 " in out
    assert eval_width(tmp_path, images, ckpt, "--width", "0.25") == 0.25
    assert "from the checkpoint" not in capsys.readouterr().out
    old = student_checkpoint(tmp_path / "old.safetensors", None)
    assert eval_width(tmp_path, images, old) == 1.0
    assert "width 1 (the checkpoint records no width" in capsys.readouterr().out


# --- train --help ---------------------------------------------------------------------------

def test_train_help_lists_every_config_key_with_default_and_meaning(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in text.splitlines()
            if line.startswith("  ") and line.split() and line.split()[0] in FIELDS}
    assert set(rows) == set(FIELDS)
    assert all(len(row) == 2 and row[1].strip() for row in rows.values()), "a key without a meaning"
    assert rows["width"][0] == "0.25" and rows["grad_clip"][0] == "none"
    assert rows["betas"][0] == "0.9,0.999" and rows["t_detach"][0] == "true"


def test_every_config_field_has_help():
    assert [name for name, f in FIELDS.items() if not f.metadata.get("help")] == []


# --- start-up cost and one device rule ------------------------------------------------------

def test_help_and_import_do_not_load_torch():
    """`csd-fast --help` and `import csd_fast` answer at once: torch loads on first real use."""
    import subprocess
    import sys
    code = ("import sys, csd_fast, csd_fast.cli as c; c.build_parser(); "
            "assert 'torch' not in sys.modules, 'torch was imported'; "
            "csd_fast.EDSRCSD; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_names_resolve():
    import csd_fast
    for name in csd_fast.__all__:
        assert getattr(csd_fast, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        csd_fast.nope


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", [["smoke", "--size", "8"], ["eval", "--data", "x", "--scale", "2"],
                                     ["upscale", "x.png", "-o", "o", "--checkpoint", "m.safetensors"]])
def test_cuda_without_a_gpu_is_one_usage_error(command, capsys, tmp_path, images, monkeypatch):
    if command[0] == "eval":
        command[2] = str(images)
    if command[0] == "upscale":
        command[1] = str(images)
        command[3] = str(tmp_path / "out")
        command[5] = str(student_checkpoint(tmp_path / "m.safetensors"))
    assert main([*command, "--device", "cuda"]) == 2
    assert capsys.readouterr().err.endswith("device 'cuda' requested but no CUDA device is available\n")


# --- export ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, suffix", [("csd_fast", ".safetensors"), ("edsr_pytorch", ".pt"),
                                         ("basicsr", ".pth")])
def test_exported_student_evaluates_as_the_student(tmp_path, images, capsys, fmt, suffix):
    """eval reads the slim file directly, and scores it as the CSD network at its width."""
    source = student_checkpoint(tmp_path / "csd.safetensors", 0.5)
    slim = tmp_path / f"slim{suffix}"
    assert main(["export", str(source), "--format", fmt, "-o", str(slim)]) == 0
    written = json.loads(capsys.readouterr().out)
    assert (written["width"], written["n_feats"]) == (0.5, 4)
    overrides = [f"--{k}" for k in written["load_overrides"]]  # what the file cannot say
    assert main(["export", str(source), "--format", fmt, "-o", str(slim)]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err

    def scores(ckpt, *extra):
        report = tmp_path / "r.json"
        assert main(["eval", "--checkpoint", str(ckpt), "--data", str(images), "--device", "cpu",
                     "--json", str(report), "--csv", "", "--overwrite", *extra]) == 0
        return json.loads(report.read_text())["results"]

    # a BasicSR file does not say its value range: read as [0, 1] images with 255 inside, the
    # network computes the same, so the scores still agree
    assert overrides == (["--rgb_range"] if fmt == "basicsr" else [])
    slim_scores, source_scores = scores(slim), scores(source)  # the source at its own width, 0.5
    for name, got in slim_scores.items():
        want = source_scores[name]
        assert got["model"]["psnr"] == pytest.approx(want["model"]["psnr"], abs=1e-4)
        assert got["model"]["ssim"] == pytest.approx(want["model"]["ssim"], abs=1e-6)


# --- argparse's errors are one line too -------------------------------------------------------

@pytest.mark.parametrize("argv, where, says", [
    (["eval", "--data", "x", "--width", "0"], "eval", "argument --width: every width must be in (0, 1], got '0'"),
    (["eval", "--data", "x", "--width", "nan"], "eval", "got 'nan'"),
    (["upscale", "a.png", "-o", "o", "--checkpoint", "m", "--tile", "0"], "upscale", "argument --tile"),
    (["upscale", "a.png", "-o", "o", "--checkpoint", "m", "--bogus"], "upscale",
     "unrecognized arguments: --bogus"),
    (["train", "stage=csd", "--bogus", "x"], "train", "unrecognized arguments: --bogus"),
    (["eval", "--scale", "2"], "eval", "the following arguments are required: --data"),
    (["export"], "export", "required: checkpoint, -o/--output"),
    (["eval", "--data", "x", "--dtype", "int8"], "eval", "argument --dtype: invalid choice: 'int8'"),
    ([], None, "the following arguments are required: COMMAND"),
    (["nope"], None, "argument COMMAND: invalid choice: 'nope'"),
])
def test_command_line_errors_are_one_line(capsys, argv, where, says):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    prefix = f"csd-fast {where}: error: " if where else "csd-fast: error: "
    assert captured.err.startswith(prefix) and captured.err.count("\n") == 1, captured.err
    assert says in captured.err and "usage" not in captured.err
    assert captured.out == ""


def test_help_still_prints_everything(capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: csd-fast eval") and "--overwrite" in text and "--self-ensemble" in text
    assert len(text.splitlines()) > 20


# --- a width the checkpoint was never trained at ------------------------------------------------

def checkpoint_of_stage(path, stage, width=0.5):
    torch.manual_seed(0)
    metadata = {"stage": stage} if stage else None
    return save_checkpoint(EDSRCSD(2, 1, 8, 1.0), path, metadata, default_width=width if stage else None)


@pytest.mark.parametrize("stage, width, warned", [
    ("csd", 0.25, True), ("csd", 0.5, False), ("csd", 1.0, False), ("csd", 0.55, False),  # 0.55: 4 channels too
    ("student", 1.0, True), ("student", 0.5, False),
    ("teacher", 0.5, True), ("teacher", 1.0, False),
    (None, 0.25, False),  # the file says nothing: nothing to warn about
])
def test_an_untrained_width_is_warned_about_once(tmp_path, images, capsys, stage, width, warned):
    ckpt = checkpoint_of_stage(tmp_path / "m.safetensors", stage, 1.0 if stage == "teacher" else 0.5)
    eval_width(tmp_path, images, ckpt, "--width", str(width))
    upscaled = main(["upscale", str(images), "-o", str(tmp_path / "up"), "--checkpoint", str(ckpt),
                     "--device", "cpu", "--width", str(width)])
    assert upscaled == 0
    err = capsys.readouterr().err
    for command in ("eval", "upscale"):
        lines = [line for line in err.splitlines() if line.startswith(f"csd-fast {command}: warning:")]
        assert len(lines) == (1 if warned else 0), err
        if warned:
            assert f"width {width:g} was never trained: this checkpoint was trained at width" in lines[0]


def test_the_trainer_records_which_widths_it_trained(images, tmp_path):
    from csd_fast import load_checkpoint
    from csd_fast.train import load_config, train

    common = dict(scale=2, n_feats=8, n_resblocks=1, lr_patch=8, batch=2, neg_num=2, iterations=1,
                  width=0.5, progress=False, tensorboard=False, train_data=str(images), val_data=str(images))
    train(load_config(stage="teacher", out_dir=str(tmp_path / "t"), **common))
    train(load_config(stage="csd", lambda_c=0, teacher_checkpoint=str(tmp_path / "t" / "last.pt"),
                      out_dir=str(tmp_path / "c"), **common))
    for run, want in (("t", (1.0,)), ("c", (0.5, 1.0))):
        for name in ("best.safetensors", "best.pt", "last.pt"):
            assert load_checkpoint(tmp_path / run / name).trained_widths == want, (run, name)
    model = load_checkpoint(tmp_path / "c" / "best.safetensors")
    save_checkpoint(model, tmp_path / "again.safetensors")  # a loaded model saved again keeps it
    assert load_checkpoint(tmp_path / "again.safetensors").trained_widths == (0.5, 1.0)
