"""The training loop for the three stages (teacher, csd, student); see docs/method.md, section 3."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..archs import EDSRCSD
from ..checkpoint import load_checkpoint, save_checkpoint
from ..data import PatchDataset, SRFolder
from ..evaluation import evaluate
from ..losses import CSDLoss, load_vgg19
from . import distributed
from .config import ConfigError, TrainConfig, save_config
from .curves import read_log, training_curves
from .runlog import RunLog
from .sampling import batch_loader, item_seed
from .step import TrainStep, graph_supported
from .state import load_state, rng_state, save_state, set_rng_state

# Test hook: SIGKILL this process right after the `last` checkpoint of this iteration is written.
KILL_AFTER_ENV = "CSD_FAST_TEST_KILL_AFTER_CHECKPOINT"
_NEGATIVES_SLOT = 1 << 40  # seed slot for the negatives' permutation, apart from data slots


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


class StageForward(nn.Module):
    """Both forwards of a step in one module call, so DDP sees one forward per backward."""

    def __init__(self, model: EDSRCSD, stage: str, width: float):
        super().__init__()
        self.model, self.stage, self.width = model, stage, width

    def forward(self, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.stage == "teacher":
            return self.model(lr, 1.0), None
        if self.stage == "student":
            return self.model(lr, self.width), None
        return self.model(lr, self.width), self.model(lr, 1.0)


def build_model(cfg: TrainConfig) -> EDSRCSD:
    return EDSRCSD.from_preset(cfg.preset, cfg.scale, **cfg.model_kwargs())


def load_teacher_weights(model: EDSRCSD, path: str) -> None:
    """Weights from a trainer state file (last.pt / best.pt) or any checkpoint load_checkpoint reads."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"teacher_checkpoint: {path} does not exist")
    try:
        state = load_state(path)["model"]
    except Exception:  # not one of ours: a .safetensors or a foreign layout
        state = load_checkpoint(path).state_dict()
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"teacher_checkpoint {path} does not fit the configured model "
                         f"({model.config()}): {err}") from None


def build_loss(cfg: TrainConfig, device: torch.device) -> CSDLoss:
    """teacher/student stages: plain L1 on the one output (CSDLoss with both lambdas 0)."""
    if cfg.stage != "csd":
        return CSDLoss(None, lambda_c=0.0, lambda_t=0.0)
    vgg = load_vgg19(cfg.vgg_weights, random_weights=cfg.random_vgg).to(device) if cfg.lambda_c else None
    return CSDLoss(vgg, cfg.lambda_c, cfg.lambda_t, cfg.neg_num, cfg.t_detach, cfg.exclude_self,
                   backend=None if cfg.loss_backend == "auto" else cfg.loss_backend)


def _validate(model: EDSRCSD, cfg: TrainConfig, device: torch.device) -> dict:
    """Mean PSNR over the validation sets, for the student width and the teacher (width 1)."""
    def mean_psnr(width: float) -> float:
        res = evaluate(model, [cfg.val_data], cfg.scale, width=width, device=device, progress=False)
        return sum(r["model"]["psnr"] for r in res.values()) / len(res)

    out = {"val_psnr_teacher": mean_psnr(1.0)}
    out["val_psnr_student"] = out["val_psnr_teacher"] if cfg.stage == "teacher" else mean_psnr(cfg.width)
    model.train()
    return out


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Run cfg.stage up to cfg.iterations; with resume, continue from out_dir/last.pt exactly.

    Returns {"iteration", "out_dir", "last", "best", "best_psnr", "best_iteration", "terms", "val"}.
    Bad data paths fail before out_dir is created; a fresh run that fails before writing its
    first checkpoint removes what it created there (see OutDirUndo).
    """
    _check_paths(cfg)
    out = Path(cfg.out_dir)
    last_path, best_path = out / "last.pt", out / "best.pt"
    if last_path.exists() and not resume:
        raise FileExistsError(f"{out} already holds a run ({last_path}); pass resume "
                              "(--resume) to continue it or choose another out_dir")
    undo = None if resume and last_path.is_file() else OutDirUndo(out, (last_path, best_path))
    was_deterministic, was_benchmark = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    if cfg.deterministic:
        # cuBLAS needs a fixed workspace for repeatable results; it must be set before
        # the first CUDA call, and a user's own setting wins.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    dd = distributed.setup(cfg.device)
    try:
        return _run(cfg, resume, dd, out, last_path, best_path)
    except BaseException:
        if undo is not None and dd.main:
            undo()
        raise
    finally:
        dd.close()
        torch.use_deterministic_algorithms(was_deterministic)
        torch.backends.cudnn.benchmark = was_benchmark


def _check_paths(cfg: TrainConfig) -> None:
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


@dataclasses.dataclass
class Numerics:
    """The run's precision, memory format and step execution, with "auto" settings resolved."""
    amp: str | None
    channels_last: bool
    cuda_graph: bool

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)

    def describe(self) -> str:
        return (f"{self.amp or 'fp32'} {'autocast' if self.amp else 'weights'}, "
                f"{'channels-last' if self.channels_last else 'NCHW'}, "
                f"{'CUDA-graph' if self.cuda_graph else 'eager'} steps")


def resolve_numerics(cfg: TrainConfig, device: torch.device, world_size: int) -> Numerics:
    """amp "auto" is bf16 on a CUDA device that has it; channels_last and cuda_graph None are
    on wherever they can be (CUDA; for graphs also one process and no fp16 loss scaling)."""
    cuda = device.type == "cuda"
    amp = cfg.amp
    if amp == "auto":
        amp = "bf16" if cuda and torch.cuda.is_bf16_supported() else None
    channels_last = cuda if cfg.channels_last is None else cfg.channels_last
    why_not = graph_supported(device, world_size, amp)
    if cfg.cuda_graph and why_not:
        raise ConfigError(f"cuda_graph: cannot be on here: {why_not} (cuda_graph=false runs eagerly)")
    cuda_graph = why_not is None if cfg.cuda_graph is None else cfg.cuda_graph
    return Numerics(amp, channels_last, cuda_graph)


def _run(cfg: TrainConfig, resume: bool, dd: distributed.Dist, out: Path, last_path: Path,
         best_path: Path) -> dict:
    device = dd.device
    if cfg.batch % dd.world_size:
        raise ValueError(f"batch: {cfg.batch} does not split over {dd.world_size} processes")
    _seed_everything(cfg.seed)
    model = build_model(cfg)
    if cfg.teacher_checkpoint and cfg.stage != "teacher":
        load_teacher_weights(model, cfg.teacher_checkpoint)
    numerics = resolve_numerics(cfg, device, dd.world_size)
    model.to(device)
    if numerics.channels_last:
        model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.decay_every, cfg.decay_gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=numerics.amp == "fp16")
    # every training image decoded and its size checked before out_dir is created
    patches = PatchDataset(cfg.train_data, cfg.scale, cfg.lr_patch, augment=cfg.augment)

    if cfg.stage == "csd" and not cfg.teacher_checkpoint and dd.main:
        print("csd_fast train: note: no teacher_checkpoint, the csd stage starts from random weights")

    start, best_psnr, best_iteration = 0, -math.inf, 0
    if resume and last_path.is_file():
        state = load_state(last_path, map_location="cpu")
        _check_resumable(cfg, state.get("config", {}), last_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start, best_psnr, best_iteration = state["iteration"], state["best_psnr"], state["best_iteration"]

    net: nn.Module = StageForward(model, cfg.stage, cfg.width)
    if dd.enabled:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)

    log = None
    if dd.main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        log = RunLog(out, start, cfg.tensorboard)
        if cfg.stage == "csd" and cfg.lambda_c and cfg.random_vgg:
            print("csd_fast train: WARNING random_vgg=True, the contrastive loss uses an untrained VGG19")
        print(f"csd_fast train: {numerics.describe()} on {device}")

    loader = batch_loader(patches, cfg.seed, cfg.batch, start, cfg.iterations, dd.rank,
                          dd.world_size, cfg.num_workers, pin_memory=device.type == "cuda")
    bar = tqdm(total=cfg.iterations, initial=start, disable=not (cfg.progress and dd.main),
               desc=f"train {cfg.stage}", unit="it")
    kill_after = os.environ.get(KILL_AFTER_ENV)
    # Under DDP the contrastive term is that of the global batch, as in one process: negatives
    # drawn from every rank's LR, distances averaged over ranks (CSDLoss.forward).
    global_negatives = dd.enabled and cfg.stage == "csd" and bool(cfg.lambda_c)

    def check_finite(terms: dict) -> None:
        """Every rank stops together at a NaN or infinite loss, before the update."""
        if dd.any(not bool(torch.isfinite(terms["total"].detach()).all())):
            values = {k: float(v.detach()) for k, v in terms.items()}
            saved = f"{last_path} (iteration {_saved_iteration(last_path)})" if last_path.is_file() \
                else "none written yet"
            raise NonFiniteLossError(f"non-finite loss at iteration {iteration}: {values}; "
                                     f"stopping. Last good checkpoint: {saved}")

    train_step = TrainStep(net, list(model.parameters()), loss_fn, optimizer, scaler, cfg.scale,
                           numerics.amp_dtype, cfg.grad_clip, check_finite,
                           use_graph=numerics.cuda_graph,
                           reduce=dd.global_mean if global_negatives else None)
    terms_out: dict = {}
    val: dict = {}
    window_start, window_iters = time.perf_counter(), 0
    iteration = start
    model.train()
    try:
        for lr, hr in loader:
            iteration += 1
            lr, hr = lr.to(device, non_blocking=True), hr.to(device, non_blocking=True)
            pool = dd.all_gather(lr) if global_negatives else None
            if numerics.channels_last:
                lr = lr.contiguous(memory_format=torch.channels_last)
            # the negatives' permutation of the global batch depends only on (seed, iteration),
            # the same on every rank: exact resume, and DDP draws what one process draws
            gen = torch.Generator().manual_seed(item_seed(cfg.seed, iteration, _NEGATIVES_SLOT))
            terms = train_step(lr, hr, gen, pool, pool_offset=dd.rank * lr.size(0))
            scheduler.step()
            window_iters += 1
            terms_out = {k: float(v.detach()) for k, v in terms.items()}

            row: dict = {}
            if iteration % cfg.val_every == 0 or iteration == cfg.iterations:
                if cfg.val_data is not None and dd.main:
                    val = _validate(model, cfg, device)
                    row.update(val)
                    if val["val_psnr_student"] > best_psnr:
                        best_psnr, best_iteration = val["val_psnr_student"], iteration
                        _save_best(model, cfg, best_path, iteration, val)
                dd.barrier()
            if dd.main and (row or iteration % cfg.log_every == 0):
                speed = window_iters / max(time.perf_counter() - window_start, 1e-9)
                row.update(iteration=iteration, lr=optimizer.param_groups[0]["lr"], it_per_s=speed,
                           **terms_out)
                log.write(row)
                window_start, window_iters = time.perf_counter(), 0
            if iteration % cfg.checkpoint_every == 0 or iteration == cfg.iterations:
                if dd.main:
                    save_state(last_path, {
                        "iteration": iteration, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(), "rng": rng_state(),
                        "best_psnr": best_psnr, "best_iteration": best_iteration,
                        "config": cfg.to_dict(),
                    })
                    if kill_after is not None and int(kill_after) == iteration:
                        os.kill(os.getpid(), signal.SIGKILL)
                dd.barrier()
            bar.set_postfix(loss=f"{terms_out['total']:.4g}")
            bar.update(1)
    finally:
        bar.close()
        if log is not None:
            log.close()
            _write_curves(cfg, out)
    return {"iteration": iteration, "out_dir": str(Path(cfg.out_dir)), "last": str(last_path),
            "best": str(best_path) if best_path.exists() else None,
            "best_psnr": best_psnr if best_iteration else None, "best_iteration": best_iteration or None,
            "terms": terms_out, "val": val}


RUN_DEFINING = ("stage", "scale", "preset", "n_resblocks", "n_feats", "res_scale", "width", "batch", "seed")


def _check_resumable(cfg: TrainConfig, stored: dict, path: Path) -> None:
    """A resume must continue the same run: the model, stage, batch and seed may not change."""
    now = cfg.to_dict()
    for key in RUN_DEFINING:
        if key in stored and stored[key] != now[key]:
            raise ValueError(f"{key}: {path} was written with {key}={stored[key]!r}, the config now "
                             f"says {now[key]!r}; a resumed run must keep it")


def _saved_iteration(path: Path) -> int | str:
    try:
        return load_state(path)["iteration"]
    except Exception as err:  # report, don't mask the loss error
        return f"unreadable: {err}"


def _write_curves(cfg: TrainConfig, out: Path) -> None:
    """<out>/curves.png from log.csv, also when the run stops on an error (the curves show how
    it got there); a failure to draw is reported, never raised over the run's own outcome."""
    try:
        training_curves([(cfg.stage, read_log(out / "log.csv"))], out / "curves.png", cfg.width)
    except Exception as err:
        print(f"csd_fast train: warning: could not draw {out / 'curves.png'}: "
              f"{type(err).__name__}: {err}")


def _save_best(model: EDSRCSD, cfg: TrainConfig, path: Path, iteration: int, val: dict) -> None:
    """best.pt for training tools and best.safetensors for csd-fast eval/upscale, which run it
    at the width it was picked for (the student's; a teacher's is 1) unless told otherwise."""
    save_state(path, {"iteration": iteration, "model": model.state_dict(), "val": val,
                      "config": cfg.to_dict()})
    save_checkpoint(model, path.with_suffix(".safetensors"),
                    {"iteration": str(iteration), "stage": cfg.stage,
                     **{k: f"{v:.4f}" for k, v in val.items()}},
                    default_width=1.0 if cfg.stage == "teacher" else cfg.width)
