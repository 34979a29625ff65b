"""Training: config handling, each stage, checkpoints, exact resume after SIGKILL, non-finite stop,
failed runs leaving nothing behind, and what amp, channels_last and grad_clip change."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch.optim.optimizer import register_optimizer_step_pre_hook

from csd_fast.checkpoint import load_checkpoint
from csd_fast.losses import CSDLoss
from csd_fast.train import (ConfigError, NonFiniteLossError, TrainConfig, load_config,
                            train, trainer)
from csd_fast.cli import main as cli_main
from csd_fast.train.curves import STUDENT_COLOUR, TEACHER_COLOUR

from _data import random_images
from _train_helpers import KILLED_RUN

TINY = dict(scale=2, n_feats=8, n_resblocks=1, lr_patch=8, batch=4, neg_num=2, random_vgg=True,
            width=0.5, progress=False, log_every=1)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return random_images(tmp_path_factory.mktemp("hr"), 4, 32)


def tiny(images, out, **kw) -> TrainConfig:
    return load_config(**{**TINY, "train_data": images, "val_data": images, "out_dir": str(out), **kw})


def weights(path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def read_log(out) -> list[dict]:
    with open(out / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


# --- config ---------------------------------------------------------------------------------

def test_defaults_are_the_reference_recipe():
    c = TrainConfig()
    assert (c.scale, c.preset, c.width, c.neg_num, c.lambda_c, c.lambda_t) == (4, "edsr-baseline", 0.25, 10, 200, 1)
    assert (c.t_detach, c.exclude_self, c.lr_patch, c.batch, c.lr) == (True, False, 48, 16, 1e-4)
    assert (c.betas, c.eps, c.decay_every, c.decay_gamma, c.iterations) == ((0.9, 0.999), 1e-8, 200_000, 0.1, 400_000)
    assert (c.grad_clip, c.seed, c.random_vgg) == (None, 0, False)
    # numerics follow the device unless set: see test_numerics_follow_the_device
    assert (c.amp, c.channels_last, c.cuda_graph) == ("auto", None, None)


def test_numerics_follow_the_device(monkeypatch):
    from csd_fast.train.config import ConfigError
    from csd_fast.train.build import resolve_numerics

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    auto = TrainConfig()
    got = resolve_numerics(auto, cpu, 1)
    assert (got.amp, got.channels_last, got.cuda_graph, got.amp_dtype) == (None, False, False, None)
    got = resolve_numerics(auto, cuda, 1)
    assert (got.amp, got.channels_last, got.cuda_graph, got.amp_dtype) == ("bf16", True, True,
                                                                           torch.bfloat16)
    assert "bf16 autocast, channels-last, CUDA-graph steps" == got.describe()
    assert resolve_numerics(auto, cuda, 2).cuda_graph is False  # DDP: eager
    assert resolve_numerics(TrainConfig(amp="fp16"), cuda, 1).cuda_graph is False
    off = resolve_numerics(TrainConfig(amp=None, channels_last=False, cuda_graph=False), cuda, 1)
    assert (off.amp, off.channels_last, off.cuda_graph) == (None, False, False)
    on_cpu = resolve_numerics(TrainConfig(amp="bf16", channels_last=True), cpu, 1)
    assert (on_cpu.amp, on_cpu.channels_last, on_cpu.cuda_graph) == ("bf16", True, False)
    with pytest.raises(ConfigError, match="cuda_graph: cannot be on here: DDP"):
        resolve_numerics(TrainConfig(cuda_graph=True), cuda, 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_numerics(auto, cuda, 1).amp is None  # a GPU without bf16


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"stage": "teacher", "lr": 2e-4, "batch": 8, "amp": "bf16"}))
    c = load_config(path, ["batch=4", "betas=0.8,0.99", "grad_clip=none", "t_detach=false", "iterations=1e3"])
    assert (c.stage, c.lr, c.batch, c.amp, c.betas) == ("teacher", 2e-4, 4, "bf16", (0.8, 0.99))
    assert (c.grad_clip, c.t_detach, c.iterations) == (None, False, 1000)
    assert isinstance(c.iterations, int)


@pytest.mark.parametrize("overrides, key", [
    (["bogus=1"], "bogus"), (["lr=fast"], "lr"), (["batch=2.5"], "batch"), (["stage=pupil"], "stage"),
    (["width=1.5"], "width"), (["amp=fp8"], "amp"), (["t_detach=maybe"], "t_detach"),
    (["betas=0.9"], "betas"), (["neg_num=20"], "neg_num"), (["lr"], "lr"), (["scale=none"], "scale"),
])
def test_bad_config_names_the_key(overrides, key):
    with pytest.raises(ConfigError, match=rf"^(override )?'?{key}"):
        load_config(None, overrides)


def test_unknown_yaml_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lamda_c: 5\n")
    with pytest.raises(ConfigError, match="lamda_c: unknown config key"):
        load_config(path)


# --- stages, checkpoints, best/last ---------------------------------------------------------

@pytest.mark.parametrize("stage", ["teacher", "csd", "student"])
def test_each_stage_runs(images, tmp_path, stage):
    cfg = tiny(images, tmp_path / "run", stage=stage, iterations=4, val_every=2, checkpoint_every=2)
    result = train(cfg)
    expected = {"teacher": {"l1_student"}, "student": {"l1_student"},
                "csd": {"l1_student", "l1_teacher", "contrastive"}}[stage]
    assert set(result["terms"]) == expected | {"total"}
    assert all(np.isfinite(v) for v in result["terms"].values())
    out = tmp_path / "run"
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["iteration"] == 4 and set(last) >= {"model", "optimizer", "scheduler", "rng"}
    assert last["scheduler"]["last_epoch"] == 4
    # best = the logged validation row with the highest student PSNR
    rows = [r for r in read_log(out) if r["val_psnr_student"]]
    assert [int(r["iteration"]) for r in rows] == [2, 4]
    best_row = max(rows, key=lambda r: float(r["val_psnr_student"]))
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["iteration"] == int(best_row["iteration"]) == result["best_iteration"]
    assert best["val"]["val_psnr_student"] == pytest.approx(float(best_row["val_psnr_student"]))
    best_model = load_checkpoint(out / "best.safetensors")
    assert best_model.n_feats == 8
    # eval/upscale run it at the width it was picked for: the student's, or 1 for a teacher
    assert best_model.default_width == (1.0 if stage == "teacher" else 0.5)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["random_vgg"] is True and saved["stage"] == stage
    assert load_config(out / "config.yaml") == cfg
    assert [int(r["iteration"]) for r in read_log(out)] == [1, 2, 3, 4]
    # the trainer's own curves: loss, contrastive term (csd only) and validation PSNR panels
    with Image.open(out / "curves.png") as im:
        assert im.size == (720, 830 if stage == "csd" else 560)
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    assert {TEACHER_COLOUR if stage != "student" else STUDENT_COLOUR} <= colours


def test_csd_starts_from_the_teacher_and_refuses_to_clobber(images, tmp_path):
    teacher = train(tiny(images, tmp_path / "t", stage="teacher", iterations=2, val_data=None))
    assert teacher["best"] is None  # no validation data: no best checkpoint
    cfg = tiny(images, tmp_path / "c", stage="csd", iterations=1, lr=1e-12,
               teacher_checkpoint=teacher["last"])
    train(cfg)
    start, end = weights(teacher["last"]), weights(tmp_path / "c" / "last.pt")
    assert all(torch.allclose(start[k], end[k], atol=1e-6) for k in start)
    with pytest.raises(FileExistsError, match="resume"):
        train(cfg)


def test_cli_runs_train(images, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**TINY, "train_data": images, "out_dir": str(tmp_path / "o")}))
    assert cli_main(["train", "--config", str(path), "stage=teacher", "--set", "iterations=2"]) == 0
    assert torch.load(tmp_path / "o" / "last.pt", weights_only=True)["iteration"] == 2


def test_cli_exit_status_config_error_is_2_failed_run_is_1(images, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    common = [f"train_data={images}", f"out_dir={out}", "stage=teacher", "n_feats=8", "n_resblocks=1",
              "scale=2", "lr_patch=8", "batch=4", "progress=false", "tensorboard=false"]
    assert cli_main(["train", *common, "batch=0"]) == 2
    assert capsys.readouterr().err == "csd-fast train: error: batch: must be >= 1, got 0\n"
    assert cli_main(["train", *common, "lamda_c=5"]) == 2
    assert "lamda_c: unknown config key" in capsys.readouterr().err
    monkeypatch.setattr(CSDLoss, "forward", lambda self, *a, **k: {"total": torch.tensor(float("nan"))})
    assert cli_main(["train", *common]) == 1
    assert "csd-fast train: error: non-finite loss at iteration 1" in capsys.readouterr().err
    assert not out.exists()


# --- a failed run leaves nothing behind -----------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (None, r"train_data: dataset folder .*data does not exist"),
    ([], r"train_data: dataset folder .*data is empty"),
    (["notes.txt"], r"train_data: .*data matches no known dataset layout"),
])
def test_bad_train_data_fails_before_out_dir_exists(images, tmp_path, capsys, content, message):
    data = tmp_path / "data"
    if content is not None:
        data.mkdir()
        for name in content:
            (data / name).write_text("not an image")
    out = tmp_path / "runs" / "new"
    with pytest.raises(ConfigError, match=message):
        train(tiny(images, out, train_data=str(data)))
    assert not (tmp_path / "runs").exists()
    assert cli_main(["train", f"train_data={data}", f"out_dir={out}"]) == 2
    assert capsys.readouterr().err.startswith("csd-fast train: error: train_data: ")
    assert not (tmp_path / "runs").exists()


def test_bad_val_data_and_out_dir_fail_before_anything_is_written(images, tmp_path):
    with pytest.raises(ConfigError, match="val_data: dataset folder .*nowhere does not exist"):
        train(tiny(images, tmp_path / "run", val_data=str(tmp_path / "nowhere")))
    assert not (tmp_path / "run").exists()
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match="out_dir: .*file exists and is not a folder"):
        train(tiny(images, tmp_path / "file", val_data=None))


def test_training_image_too_small_fails_before_out_dir_exists(images, tmp_path):
    with pytest.raises(ValueError, match="smaller than the 24x24 LR patch"):
        train(tiny(images, tmp_path / "runs" / "new", lr_patch=24))
    assert not (tmp_path / "runs").exists()


def poison_loss_from(monkeypatch, iteration: int) -> None:
    """The loss becomes NaN from the given (1-based) call of CSDLoss.forward on."""
    real, calls = CSDLoss.forward, {"n": 0}

    def poisoned(self, *args, **kwargs):
        terms = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= iteration:
            terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(CSDLoss, "forward", poisoned)


def test_run_failing_before_its_first_checkpoint_removes_it(images, tmp_path, monkeypatch, capsys):
    poison_loss_from(monkeypatch, 3)  # after 2 logged iterations, before the checkpoint at 4
    out = tmp_path / "runs" / "new"
    with pytest.raises(NonFiniteLossError, match="none written yet"):
        train(tiny(images, out, stage="teacher", iterations=8, checkpoint_every=4, val_data=None))
    assert not (tmp_path / "runs").exists()  # out_dir and the parent made for it
    assert "removed what it had written" in capsys.readouterr().err


def test_failed_run_keeps_what_out_dir_held_before(images, tmp_path, monkeypatch):
    poison_loss_from(monkeypatch, 1)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    with pytest.raises(NonFiniteLossError):
        train(tiny(images, out, stage="teacher", iterations=4, val_data=None))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_failed_resume_keeps_the_run(images, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny(images, out, stage="teacher", iterations=2, checkpoint_every=2, val_data=None))
    before = sorted(p.name for p in out.iterdir())
    poison_loss_from(monkeypatch, 1)
    with pytest.raises(NonFiniteLossError, match=r"last\.pt \(iteration 2\)"):
        train(tiny(images, out, stage="teacher", iterations=4, checkpoint_every=2, val_data=None), resume=True)
    assert sorted(p.name for p in out.iterdir()) == before
    assert torch.load(out / "last.pt", weights_only=True)["iteration"] == 2


def test_failed_run_with_a_best_checkpoint_is_kept(images, tmp_path, monkeypatch):
    poison_loss_from(monkeypatch, 2)  # validation at 1 wrote best.*, last.pt not yet written
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError):
        train(tiny(images, out, stage="teacher", iterations=4, val_every=1, checkpoint_every=4))
    assert (out / "best.pt").is_file() and (out / "log.csv").is_file()


# --- TensorBoard ------------------------------------------------------------------------------

def tensorboard_scalars(folder) -> dict:
    """{tag: [(step, value), ...]} as TensorBoard shows them (purged events left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_match_the_csv_across_resumes(images, tmp_path):
    pytest.importorskip("tensorboard")
    from csd_fast.train.runlog import CSV_FORMATS, TENSORBOARD_TAGS

    out = tmp_path / "run"
    common = dict(stage="csd", checkpoint_every=2, val_every=2)
    train(tiny(images, out, iterations=2, **common))
    at_2 = (out / "last.pt").read_bytes()
    # Events are read file by file in name order, and the name starts with the creation time
    # in seconds: a writer opened in the same second could sort before the previous one.
    time.sleep(1.1)
    train(tiny(images, out, iterations=4, **common), resume=True)
    # back to the checkpoint of iteration 2, as after a crash: the events of iterations 3
    # and 4 just written are orphans that the next resume must hide, as it drops their CSV rows
    (out / "last.pt").write_bytes(at_2)
    time.sleep(1.1)
    train(tiny(images, out, iterations=4, **common), resume=True)

    rows = read_log(out)
    assert [int(r["iteration"]) for r in rows] == list(range(1, 5))
    scalars = tensorboard_scalars(out / "tensorboard")
    logged = {k for r in rows for k, v in r.items() if v and k != "iteration"}
    assert set(scalars) == {TENSORBOARD_TAGS[k] for k in logged}
    for key in logged:
        expected = [(int(r["iteration"]), float(r[key])) for r in rows if r[key]]
        got = scalars[TENSORBOARD_TAGS[key]]
        assert [s for s, _ in got] == [s for s, _ in expected], key  # each step once
        # the CSV rounds losses to 6 and it/s to 4 significant digits; TensorBoard has float32
        rel = {".6g": 1e-5, ".4g": 1e-3}.get(CSV_FORMATS.get(key), 1e-6)
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=rel), key


def test_tensorboard_off_by_config_or_missing_package(images, tmp_path, capsys, monkeypatch):
    train(tiny(images, tmp_path / "off", stage="teacher", iterations=2, val_data=None, tensorboard=False))
    assert not (tmp_path / "off" / "tensorboard").exists()
    assert "TensorBoard" not in capsys.readouterr().out
    # as if tensorboard were not installed: None in sys.modules makes its import fail
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    train(tiny(images, tmp_path / "missing", stage="teacher", iterations=3, val_data=None))
    text = capsys.readouterr().out
    assert text.count("TensorBoard logging is off") == 1 and "pip install tensorboard" in text
    assert not (tmp_path / "missing" / "tensorboard").exists()
    assert [int(r["iteration"]) for r in read_log(tmp_path / "missing")] == [1, 2, 3]


# --- exact resume after SIGKILL ---------------------------------------------------------------

def test_resume_after_sigkill_is_exact(images, tmp_path):
    common = dict(stage="csd", iterations=6, checkpoint_every=2, val_every=3, deterministic=True)
    full = train(tiny(images, tmp_path / "full", **common))

    cfg = tiny(images, tmp_path / "killed", **common)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    # cwd outside the repository: the child must import the installed csd_fast
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(tmp_path / "cfg.yaml"),
                           str(torch.get_num_threads())], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["iteration"] == 4

    resumed = train(cfg, resume=True)
    assert resumed["iteration"] == 6
    a, b = weights(full["last"]), weights(resumed["last"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [int(r["iteration"]) for r in read_log(tmp_path / "killed")] == list(range(1, 7))
    assert resumed["best_iteration"] == full["best_iteration"]
    assert resumed["best_psnr"] == full["best_psnr"]


# --- non-finite loss ------------------------------------------------------------------------

def test_non_finite_loss_stops_and_keeps_last_good(images, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = CSDLoss.forward

    def poisoned(self, *args, **kwargs):
        terms = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:  # iteration 5: after the checkpoint of iteration 4
            terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(CSDLoss, "forward", poisoned)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"iteration 5\b.*last\.pt \(iteration 4\)"):
        train(tiny(images, out, stage="teacher", iterations=8, checkpoint_every=2, val_every=100))
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in last["model"].values())


def test_validation_graphs_are_freed_when_training_resumes(images, tmp_path):
    """The model's inference graphs (and their memory pool) live from a validation to
    the next training step only."""
    from csd_fast import inference

    held = []
    handle = register_optimizer_step_pre_hook(lambda *args: held.append(len(inference._GRAPHS)))
    try:
        train(tiny(images, tmp_path / "run", stage="teacher", iterations=5, val_every=2,
                   checkpoint_every=5))
    finally:
        handle.remove()
    assert len(held) == 5 and held == [held[0]] * 5


def test_replayed_steps_are_checked_before_each_log_validation_and_checkpoint(images, tmp_path,
                                                                            monkeypatch):
    """Replayed steps report a non-finite loss in arrears: the trainer reads their flag
    at every iteration that logs, validates or saves, before it does."""
    from csd_fast.train.step import TrainStep

    steps, reads = [], []
    monkeypatch.setattr(TrainStep, "check_nonfinite", lambda self: reads.append(len(steps)))
    handle = register_optimizer_step_pre_hook(lambda *args: steps.append(None))
    try:
        train(tiny(images, tmp_path / "run", stage="teacher", iterations=7, log_every=3,
                   val_every=4, checkpoint_every=5))
    finally:
        handle.remove()
    assert reads == [3, 4, 5, 6, 7]


# --- numerics options and loader workers ----------------------------------------------------

SCHEDULE_FIRST = "error:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`:UserWarning"


@pytest.mark.filterwarnings(SCHEDULE_FIRST)
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_channels_last_and_clipping_run(images, tmp_path, amp):
    result = train(tiny(images, tmp_path / "run", stage="csd", iterations=2, amp=amp,
                        channels_last=True, grad_clip=1.0, val_data=None))
    assert all(np.isfinite(v) for v in result["terms"].values())


def watch_network(monkeypatch) -> list[dict]:
    """What each forward of the network being trained sees: its input's memory format, its
    weights' and its output's dtype (a hook on the network: its convs run as functions)."""
    seen: list[dict] = []
    real = trainer.build_model

    def record(model, args, output):
        x, weight = args[0], model.head.weight
        seen.append({"input_channels_last": not x.is_contiguous()
                     and x.is_contiguous(memory_format=torch.channels_last),
                     "weights_channels_last": not weight.is_contiguous()
                     and weight.is_contiguous(memory_format=torch.channels_last),
                     "output": output.dtype})

    def build(cfg):
        model = real(cfg)
        model.register_forward_hook(record)
        return model

    monkeypatch.setattr(trainer, "build_model", build)
    return seen


@pytest.mark.parametrize("amp, dtype", [(None, torch.float32), ("bf16", torch.bfloat16),
                                        ("fp16", torch.float16)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_amp_and_channels_last_reach_the_network(images, tmp_path, monkeypatch, amp, dtype, channels_last):
    seen = watch_network(monkeypatch)
    train(tiny(images, tmp_path / "run", stage="teacher", iterations=2, amp=amp,
               channels_last=channels_last, val_data=None, tensorboard=False))
    assert len(seen) == 2
    assert all(s["output"] == dtype for s in seen)
    assert all(s["input_channels_last"] == s["weights_channels_last"] == channels_last for s in seen)


def grad_norms_at_each_step(run) -> list[float]:
    """The total gradient norm the optimizer steps with, at every step of run()."""
    norms: list[float] = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))))

    handle = register_optimizer_step_pre_hook(record)
    try:
        run()
    finally:
        handle.remove()
    return norms


@pytest.mark.parametrize("amp", [None, "fp16"])
def test_grad_clip_bounds_the_gradient_the_optimizer_steps_with(images, tmp_path, amp):
    def run(name, clip):
        return lambda: train(tiny(images, tmp_path / name, stage="teacher", iterations=3, amp=amp,
                                  grad_clip=clip, val_data=None, tensorboard=False))

    free = grad_norms_at_each_step(run("free", None))
    assert len(free) == 3 and min(free) > 0.1  # unclipped gradients are far above the bound
    clipped = grad_norms_at_each_step(run("clipped", 1e-3))
    # under fp16 the grad scaler's skipped steps never reach the optimizer; the rest must be
    # unscaled before clipping, or the step would see 1e-3 / scale
    assert len(clipped) >= 1
    assert clipped == pytest.approx([1e-3] * len(clipped), rel=1e-4)


def test_fp16_grad_scaler_state_is_saved_and_restored_on_resume(images, tmp_path):
    out = tmp_path / "run"
    common = dict(stage="teacher", amp="fp16", checkpoint_every=2, val_data=None, tensorboard=False)
    train(tiny(images, out, iterations=2, **common))
    scaler = torch.load(out / "last.pt", weights_only=True)["scaler"]
    # the scaler was used: its growth tracker counts the steps taken since the scale last changed
    assert scaler["scale"] == 2.0 ** 16 and scaler["_growth_tracker"] == 2
    train(tiny(images, out, iterations=4, **common), resume=True)
    # restored on resume, it counts on from 2; a fresh scaler would say 2 again
    assert torch.load(out / "last.pt", weights_only=True)["scaler"]["_growth_tracker"] == 4


@pytest.mark.filterwarnings(SCHEDULE_FIRST)
def test_fp16_schedule_steps_with_the_updates_the_scaler_lets_through(images, tmp_path, monkeypatch):
    """fp16 loss scaling skips the optimizer's step when the scaled gradients overflow (here
    the first step, its loss made 1e4 times larger); the schedule steps only after an update,
    never before the first one (torch warns then), and resumes counting where it stopped."""
    real, calls = CSDLoss.forward, []

    def overflow_first(self, *args, **kwargs):
        terms = real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 1:  # finite in float32, but its fp16 gradients overflow when scaled
            terms["total"] = terms["total"] * 1e4
        return terms

    monkeypatch.setattr(CSDLoss, "forward", overflow_first)
    updates: list[int] = []
    handle = register_optimizer_step_pre_hook(lambda optimizer, args, kwargs: updates.append(1))
    common = dict(stage="teacher", amp="fp16", decay_every=1, decay_gamma=0.5, checkpoint_every=2,
                  val_data=None, tensorboard=False)
    try:
        train(tiny(images, tmp_path / "run", iterations=2, **common))
        train(tiny(images, tmp_path / "run", iterations=4, **common), resume=True)
    finally:
        handle.remove()
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert last["scaler"]["scale"] == 2.0 ** 15  # halved once: one step skipped
    assert len(updates) == 3 and last["scheduler"]["last_epoch"] == 3
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4 * 0.5 ** 3)


def test_no_grad_scaler_state_without_fp16(images, tmp_path):
    result = train(tiny(images, tmp_path / "run", stage="teacher", iterations=1, amp="bf16",
                        val_data=None, tensorboard=False))
    assert torch.load(result["last"], weights_only=True)["scaler"] == {}


def test_loader_workers_see_the_same_batches(images, tmp_path):
    runs = [train(tiny(images, tmp_path / f"w{n}", stage="teacher", iterations=2, val_data=None,
                       num_workers=n, deterministic=True)) for n in (0, 2)]
    a, b = (weights(r["last"]) for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_different_run_and_bad_val_data(images, tmp_path):
    train(tiny(images, tmp_path / "run", stage="teacher", iterations=2, val_data=None))
    with pytest.raises(ValueError, match="width: .*must keep it"):
        train(tiny(images, tmp_path / "run", stage="teacher", iterations=4, width=0.25, val_data=None),
              resume=True)
    for key, value in (("negatives", "dataset"), ("neg_num", 3), ("rgb_range", 1.0)):
        with pytest.raises(ValueError, match=f"{key}: .*must keep it"):
            train(tiny(images, tmp_path / "run", stage="teacher", iterations=4, val_data=None,
                       **{key: value}), resume=True)
    with pytest.raises(ConfigError, match="val_data: .*nowhere"):
        train(tiny(images, tmp_path / "other", stage="teacher", val_data=str(tmp_path / "nowhere")))
