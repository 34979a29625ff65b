"""The training loop for the three stages (teacher, csd, student); see docs/method.md, section 3.

`train(cfg)` checks the inputs, then a Trainer runs the loop, one iteration at a time:

    setup()            model, loss, optimiser, data; resume from last.pt
    open_outputs()     config.yaml, log.csv (rank 0)
    for each batch:    feed_data -> optimize -> validate -> log -> save

The loss terms stay on the device until a log row, a validation or a checkpoint needs
them, so CUDA-graph steps run ahead of the host; the replayed steps' non-finite flag is
read there too (and every NONFINITE_READ_EVERY steps, train.step), before anything is
written. Validation's CUDA graphs are freed when training resumes.
"""
from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..archs import EDSRCSD
from ..checkpoint import save_checkpoint
from ..data import PatchDataset
from ..evaluation import evaluate
from ..inference import graph_cache, release_graphs
from . import distributed
from .build import build_loss, build_model, build_optimizer, resolve_numerics
from .config import TrainConfig, save_config
from .curves import read_log, training_curves
from .run_dir import OutDirUndo, check_paths, check_resumable, saved_iteration
from .runlog import RunLog
from .sampling import batch_loader, dataset_negatives, item_seed
from .state import load_state, rng_state, save_state, set_rng_state
from .step import TrainStep

_NEGATIVES_SLOT = 1 << 40  # seed slot for the negatives' permutation, apart from data slots

CheckpointCallback = Callable[[int, Path], None]


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


def train(cfg: TrainConfig, resume: bool = False, on_checkpoint: CheckpointCallback | None = None) -> dict:
    """Run cfg.stage up to cfg.iterations; with resume, continue from out_dir/last.pt exactly.

    on_checkpoint(iteration, path) is called on the main process after each write of
    last.pt (e.g. to copy it elsewhere); what it raises stops the run.
    Returns {"iteration", "out_dir", "last", "best", "best_psnr", "best_iteration", "terms", "val"}.
    Bad data paths fail before out_dir is created, and so does an out_dir holding another run's
    files or a file the run reads (run_dir.check_outputs); a fresh run that fails before writing
    its first checkpoint removes what it created there (see OutDirUndo).
    """
    check_paths(cfg, resume)
    out = Path(cfg.out_dir)
    last_path, best_path = out / "last.pt", out / "best.pt"
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
        trainer = Trainer(cfg, dd, on_checkpoint)
        trainer.setup(resume)
        return trainer.run()
    except BaseException:
        if undo is not None and dd.main:
            undo()
        raise
    finally:
        dd.close()
        torch.use_deterministic_algorithms(was_deterministic)
        torch.backends.cudnn.benchmark = was_benchmark


class Trainer:
    """One run of a stage: its parts (set up once) and the steps of its loop."""

    def __init__(self, cfg: TrainConfig, dd: distributed.Dist,
                 on_checkpoint: CheckpointCallback | None = None):
        self.cfg, self.dd, self.on_checkpoint = cfg, dd, on_checkpoint
        self.out = Path(cfg.out_dir)
        self.last_path, self.best_path = self.out / "last.pt", self.out / "best.pt"
        self.iteration, self.start = 0, 0
        self.best_psnr, self.best_iteration = -math.inf, 0
        self._terms: dict[str, torch.Tensor] = {}  # the last step's, on the device
        self.val: dict = {}
        self.log: RunLog | None = None

    # --- setup ------------------------------------------------------------------------------

    def setup(self, resume: bool) -> None:
        cfg, dd = self.cfg, self.dd
        if cfg.batch % dd.world_size:
            raise ValueError(f"batch: {cfg.batch} does not split over {dd.world_size} processes")
        _seed_everything(cfg.seed)
        self.device = dd.device
        self.model = build_model(cfg)
        self.numerics = resolve_numerics(cfg, self.device, dd.world_size)
        self.model.to(self.device)
        if self.numerics.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.loss_fn = build_loss(cfg, self.device)
        self.optimizer, self.scheduler, self.scaler = build_optimizer(
            cfg, self.model, self.device, self.numerics.amp)
        # every training image decoded and its size checked before out_dir is created
        self.patches = PatchDataset(cfg.train_data, cfg.scale, cfg.lr_patch, augment=cfg.augment)
        # negatives=dataset: K LR patches of the training set per step, from (seed, iteration) alone
        self.negatives = dataset_negatives(cfg, self.patches)
        if cfg.stage == "csd" and not cfg.teacher_checkpoint and dd.main:
            print("csd_fast train: note: no teacher_checkpoint, the csd stage starts from random weights")
        if resume and self.last_path.is_file():
            self.restore(self.last_path)
        self.iteration = self.start

        self.net: nn.Module = StageForward(self.model, cfg.stage, cfg.width)
        if dd.enabled:
            self.net = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # Under DDP the contrastive term is that of the global batch, as in one process:
        # negatives drawn from every rank's LR, distances averaged over ranks (CSDLoss.forward).
        self.global_negatives = dd.enabled and cfg.stage == "csd" and bool(cfg.lambda_c)
        self.step = TrainStep(self.net, list(self.model.parameters()), self.loss_fn, self.optimizer,
                              self.scaler, cfg.scale, self.numerics.amp_dtype, cfg.grad_clip,
                              self.check_finite, use_graph=self.numerics.cuda_graph,
                              reduce=dd.global_mean if self.global_negatives else None)

    def restore(self, path: Path) -> None:
        """Continue exactly where last.pt stopped: weights, optimiser, schedule, scaler, RNGs."""
        state = load_state(path, map_location="cpu")
        check_resumable(self.cfg, state.get("config", {}), path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.start = state["iteration"]
        self.best_psnr, self.best_iteration = state["best_psnr"], state["best_iteration"]

    def open_outputs(self) -> None:
        """config.yaml and the log, written by the main process only."""
        if not self.dd.main:
            return
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.out / "config.yaml")
        self.log = RunLog(self.out, self.start, cfg.tensorboard)
        if cfg.stage == "csd" and cfg.lambda_c and cfg.random_vgg:
            print("csd_fast train: WARNING random_vgg=True, the contrastive loss uses an untrained VGG19")
        print(f"csd_fast train: {self.numerics.describe()} on {self.device}")

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> dict:
        cfg, dd = self.cfg, self.dd
        self.open_outputs()
        loader = batch_loader(self.patches, cfg.seed, cfg.batch, self.start, cfg.iterations, dd.rank,
                              dd.world_size, cfg.num_workers, pin_memory=self.device.type == "cuda",
                              negatives=self.negatives)
        bar = tqdm(total=cfg.iterations, initial=self.start, disable=not (cfg.progress and dd.main),
                   desc=f"train {cfg.stage}", unit="it")
        self.window = (time.perf_counter(), 0)
        self.model.train()
        try:
            for batch in loader:
                self.iteration += 1
                lr, hr, pool, negatives = self.feed_data(batch)
                self.optimize(lr, hr, pool, negatives)
                if self.host_reads():
                    self.step.check_nonfinite()
                row = self.validate()
                self.write_log(row)
                self.save()
                if self.log_due(row):
                    bar.set_postfix(loss=f"{self.terms['total']:.4g}")
                bar.update(1)
        finally:
            bar.close()
            if self.log is not None:
                self.log.close()
                _write_curves(cfg, self.out)
        return self.result()

    def feed_data(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                        torch.Tensor | None]:
        """This rank's (lr, hr) on the device in the model's value range; under DDP the
        global batch's LR from which negatives are drawn; with negatives=dataset, the
        step's negatives (the same on every rank) instead."""
        lr, hr, *negatives = (self.model.to_model_range(t.to(self.device, non_blocking=True))
                              for t in batch)
        negatives = negatives[0] if negatives else None
        pool = self.dd.all_gather(lr) if self.global_negatives and negatives is None else None
        if self.numerics.channels_last:
            lr = lr.contiguous(memory_format=torch.channels_last)
        return lr, hr, pool, negatives

    def optimize(self, lr: torch.Tensor, hr: torch.Tensor, pool: torch.Tensor | None,
                 negatives: torch.Tensor | None = None) -> None:
        """One optimisation step, and the schedule's step when the optimizer stepped (fp16
        loss scaling skips overflowing steps: the schedule counts the updates made)."""
        # the negatives' permutation of the global batch depends only on (seed, iteration),
        # the same on every rank: exact resume, and DDP draws what one process draws
        gen = torch.Generator().manual_seed(item_seed(self.cfg.seed, self.iteration, _NEGATIVES_SLOT))
        terms = self.step(lr, hr, gen, pool, pool_offset=self.dd.rank * lr.size(0),
                          negatives=negatives)
        if self.step.updated:
            self.scheduler.step()
        self._terms = {k: v.detach() for k, v in terms.items()}

    @property
    def terms(self) -> dict[str, float]:
        """The last step's loss terms as numbers (a host sync)."""
        return {k: float(v) for k, v in self._terms.items()}

    def host_reads(self) -> bool:
        """Whether this iteration logs, validates or saves: reads the host makes anyway."""
        cfg, i = self.cfg, self.iteration
        return (i % cfg.log_every == 0 or i % cfg.val_every == 0 or i % cfg.checkpoint_every == 0
                or i == cfg.iterations)

    def log_due(self, row: dict) -> bool:
        return bool(row) or self.iteration % self.cfg.log_every == 0

    def check_finite(self, terms: dict) -> None:
        """Every rank stops together at a NaN or infinite loss, before the update."""
        if self.dd.any(not bool(torch.isfinite(terms["total"].detach()).all())):
            values = {k: float(v.detach()) for k, v in terms.items()}
            saved = f"{self.last_path} (iteration {saved_iteration(self.last_path)})" \
                if self.last_path.is_file() else "none written yet"
            at = self.iteration - self.step.steps_since_nonfinite
            raise NonFiniteLossError(f"non-finite loss at iteration {at}: {values}; "
                                     f"stopping. Last good checkpoint: {saved}")

    def validate(self) -> dict:
        """At validation iterations: held-out PSNR (rank 0), and best.* when it improved."""
        cfg = self.cfg
        if not (self.iteration % cfg.val_every == 0 or self.iteration == cfg.iterations):
            return {}
        row: dict = {}
        if cfg.val_data is not None and self.dd.main:
            self.val = row = validation_psnr(self.model, cfg, self.device)
            release_graphs(self.model)  # training resumes: its memory is the steps' again
            if row["val_psnr_student"] > self.best_psnr:
                self.best_psnr, self.best_iteration = row["val_psnr_student"], self.iteration
                self.save_best(row)
        self.dd.barrier()
        return dict(row)

    def write_log(self, row: dict) -> None:
        """A log row at validations and every log_every iterations, with the speed since the last."""
        self.window = (self.window[0], self.window[1] + 1)
        if self.log is None or not self.log_due(row):
            return
        started, iterations = self.window
        speed = iterations / max(time.perf_counter() - started, 1e-9)
        self.log.write({**row, "iteration": self.iteration,
                        "lr": float(self.optimizer.param_groups[0]["lr"]), "it_per_s": speed,
                        **self.terms})
        self.window = (time.perf_counter(), 0)

    # --- checkpoints ------------------------------------------------------------------------

    def save(self) -> None:
        """last.pt at checkpoint iterations: everything an exact resume needs."""
        cfg = self.cfg
        if not (self.iteration % cfg.checkpoint_every == 0 or self.iteration == cfg.iterations):
            return
        if self.dd.main:
            save_state(self.last_path, {
                **self.model_entries(), "iteration": self.iteration,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng_state(),
                "best_psnr": self.best_psnr, "best_iteration": self.best_iteration,
                "config": cfg.to_dict(),
            })
            if self.on_checkpoint is not None:
                self.on_checkpoint(self.iteration, self.last_path)
        self.dd.barrier()

    def save_best(self, val: dict) -> None:
        """best.pt for training tools and best.safetensors for csd-fast eval/upscale, which run it
        at the width it was picked for (the student's; a teacher's is 1) unless told otherwise."""
        cfg = self.cfg
        save_state(self.best_path, {**self.model_entries(), "iteration": self.iteration, "val": val,
                                    "config": cfg.to_dict()})
        save_checkpoint(self.model, self.best_path.with_suffix(".safetensors"),
                        {"iteration": str(self.iteration), "stage": cfg.stage,
                         **{k: f"{v:.4f}" for k, v in val.items()}},
                        default_width=self.run_width)

    @property
    def run_width(self) -> float:
        """The width this run trains for: the student's, or 1 for a teacher."""
        return 1.0 if self.cfg.stage == "teacher" else self.cfg.width

    def model_entries(self) -> dict:
        """The model as a state file stores it: load_checkpoint reads it back with its
        hyper-parameters and the width it is meant to run at."""
        return {"model": self.model.state_dict(), "model_config": self.model.config(),
                "default_width": self.run_width}

    def result(self) -> dict:
        best = self.best_path if self.best_path.exists() else None
        return {"iteration": self.iteration, "out_dir": str(self.out), "last": str(self.last_path),
                "best": None if best is None else str(best),
                "best_psnr": self.best_psnr if self.best_iteration else None,
                "best_iteration": self.best_iteration or None, "terms": self.terms, "val": self.val}


def validation_psnr(model: EDSRCSD, cfg: TrainConfig, device: torch.device) -> dict:
    """Mean PSNR over the validation set, for the student width and the teacher (width 1).
    Its CUDA graphs (both widths' images) are kept together, as one working set."""
    def mean_psnr(width: float) -> float:
        res = evaluate(model, [cfg.val_data], cfg.scale, width=width, device=device, progress=False)
        return sum(r["model"]["psnr"] for r in res.values()) / len(res)

    with graph_cache(model).working_set():
        out = {"val_psnr_teacher": mean_psnr(1.0)}
        out["val_psnr_student"] = \
            out["val_psnr_teacher"] if cfg.stage == "teacher" else mean_psnr(cfg.width)
    model.train()
    return out


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)


def _write_curves(cfg: TrainConfig, out: Path) -> None:
    """<out>/curves.png from log.csv, also when the run stops on an error (the curves show how
    it got there); a failure to draw is reported, never raised over the run's own outcome."""
    try:
        training_curves([(cfg.stage, read_log(out / "log.csv"))], out / "curves.png", cfg.width)
    except Exception as err:
        print(f"csd_fast train: warning: could not draw {out / 'curves.png'}: "
              f"{type(err).__name__}: {err}")
